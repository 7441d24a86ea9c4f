// Package composecheck validates compose files with compose-go, the
// library docker compose itself loads them with. It lives apart from
// package inject because compose-go's dependencies would grow the sidecar's
// binary by 2.8 MB and its idle memory by 4.5 MB (see the README), so only
// cmd/meshlet-inject and the tests link it.
package composecheck

import (
	"context"
	"fmt"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// Validate loads content as `docker compose config` would: schema,
// interpolation (unset variables read as empty), extends and the
// consistency checks (depends_on, network_mode: service:X of services that
// exist). Paths and env_file contents are not read, since the file is
// checked before it is written where it will run.
func Validate(ctx context.Context, filename string, content []byte) error {
	details := types.ConfigDetails{
		WorkingDir:  ".",
		ConfigFiles: []types.ConfigFile{{Filename: filename, Content: content}},
		Environment: types.Mapping{},
	}
	_, err := loader.LoadWithContext(ctx, details, func(o *loader.Options) {
		o.SetProjectName("meshlet-inject", true)
		o.SkipResolveEnvironment = true
		o.SkipInclude = true
		o.ResolvePaths = false
	})
	if err != nil {
		return fmt.Errorf("compose-go: %w", err)
	}
	return nil
}
