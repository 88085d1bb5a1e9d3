//go:build !unix

package main

import (
	"net"
	"testing"
)

// refusedAddr returns a 127.0.0.1 address that refuses connections: that of a
// listener closed at once. Unlike the unix version, it does not hold the port, so
// another listener may take it meanwhile.
func refusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}
