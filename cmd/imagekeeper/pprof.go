package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// defaultMemoryLimit is the Go runtime's soft memory limit the daemon sets when the
// GOMEMLIMIT environment variable does not: a backstop that makes the collector
// work harder as the heap nears it, well above what the daemon needs at 10,000
// servers (BENCHMARKS.md section 3), so that it never binds in normal operation.
// It is not a cap: the limit is soft, and GOMEMLIMIT (e.g. in the unit's
// Environment=) overrides it, "off" included.
const defaultMemoryLimit = 256 << 20

// setMemoryLimit applies defaultMemoryLimit unless GOMEMLIMIT is set (the runtime
// has applied that one already). It returns the limit in force.
func setMemoryLimit(getenv func(string) string) int64 {
	if getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1)
	}
	debug.SetMemoryLimit(defaultMemoryLimit)
	return defaultMemoryLimit
}

// checkLoopback refuses an address that is not on the loopback interface: the
// profiles show the process's memory (names, metadata, whatever the heap holds).
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof %q: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("--pprof %q: bad port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--pprof %q: the profiling endpoint listens on loopback only (127.0.0.1, ::1 or localhost)", addr)
}

// pprofServer serves net/http/pprof on its own loopback listener, apart from
// /metrics (whose address may be reachable from a Prometheus host).
type pprofServer struct {
	srv *http.Server
	ln  net.Listener
}

// startPprof listens on addr (loopback only) and serves the profiles in the
// background.
func startPprof(addr string, log *slog.Logger) (*pprofServer, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	p := &pprofServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof server", scheduler.LogKeyErr, err)
		}
	}()
	log.Info("serving pprof profiles", "listen", ln.Addr().String())
	return p, nil
}

// Addr returns the address the profiles are served on.
func (p *pprofServer) Addr() string { return p.ln.Addr().String() }

// Close stops the server.
func (p *pprofServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return p.srv.Shutdown(ctx)
}
