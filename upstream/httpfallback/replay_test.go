package httpfallback

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReplayBodyGivesEveryAttemptTheWholeBody(t *testing.T) {
	b := &replayBody{src: io.NopCloser(strings.NewReader("hello world"))}
	first := b.attempt()
	buf := make([]byte, 5)
	if n, _ := first.Read(buf); string(buf[:n]) != "hello" {
		t.Fatalf("first read %q", buf[:n])
	}
	if !b.replayable() {
		t.Fatal("not replayable after 5 bytes")
	}
	second := b.attempt()
	if _, err := first.Read(buf); !errors.Is(err, errBodyMoved) {
		t.Errorf("a detached attempt read on: %v", err)
	}
	got, err := io.ReadAll(second)
	if err != nil || string(got) != "hello world" {
		t.Errorf("second attempt read %q, %v", got, err)
	}
	third := b.attempt()
	if got, _ := io.ReadAll(third); string(got) != "hello world" {
		t.Errorf("after EOF, a third attempt read %q", got)
	}
	if !b.replayable() {
		t.Error("a fully read small body is not replayable")
	}
}

func TestReplayBodyOverflowStopsRetries(t *testing.T) {
	big := bytes.Repeat([]byte("x"), maxReplayBody+1)
	b := &replayBody{src: io.NopCloser(bytes.NewReader(big))}
	got, err := io.ReadAll(b.attempt())
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if b.replayable() {
		t.Error("replayable after more than maxReplayBody bytes")
	}
	var none *replayBody
	if !none.replayable() {
		t.Error("no body is not replayable")
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("app hung up") }

func TestReplayBodyAppErrorStopsRetries(t *testing.T) {
	b := &replayBody{src: io.NopCloser(failingReader{})}
	if _, err := b.attempt().Read(make([]byte, 8)); err == nil {
		t.Fatal("no error")
	}
	if b.replayable() {
		t.Error("replayable after the app's body failed")
	}
}
