//go:build !linux

package dns

import "net"

func setReadBuffer(c *net.UDPConn, n int) error { return c.SetReadBuffer(n) }
