package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// defaultListen is where /metrics, /healthz and /readyz are served when the policy
// file names no listen address: loopback, because the metrics name policies and the
// cloud's health.
const defaultListen = "127.0.0.1:9478"

// readinessCheck is one thing /readyz needs; check returns nil when it is fine.
type readinessCheck struct {
	name  string
	check func(ctx context.Context) error
}

// httpServer serves the daemon's metrics and health endpoints.
type httpServer struct {
	srv     *http.Server
	ln      net.Listener
	serving atomic.Bool
	done    chan struct{}
}

// startHTTP listens on addr at once (so that a taken port fails the start, and tests
// can listen on port 0 and read Addr) and serves in the background.
func startHTTP(addr string, reg *prometheus.Registry, checks []readinessCheck, log *slog.Logger) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	h := &httpServer{ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:      reg,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	// /healthz says the process answers; it stays 200 through a drain, which is
	// the daemon doing its job, not a fault.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		var b strings.Builder
		ready := h.serving.Load()
		if !ready {
			b.WriteString("daemon: shutting down\n")
		}
		for _, c := range checks {
			if err := c.check(ctx); err != nil {
				ready = false
				fmt.Fprintf(&b, "%s: %v\n", c.name, err)
			} else {
				fmt.Fprintf(&b, "%s: ok\n", c.name)
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(b.String()))
	})
	h.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	h.serving.Store(true)
	go func() {
		defer close(h.done)
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", scheduler.LogKeyErr, err)
		}
	}()
	return h, nil
}

// Addr returns the address the server listens on.
func (h *httpServer) Addr() string { return h.ln.Addr().String() }

// Draining makes /readyz answer 503 while the daemon drains: it takes no new slots.
// /metrics and /healthz keep serving.
func (h *httpServer) Draining() { h.serving.Store(false) }

// Shutdown stops the server, waiting for open requests until ctx ends.
func (h *httpServer) Shutdown(ctx context.Context) error {
	h.serving.Store(false)
	err := h.srv.Shutdown(ctx)
	<-h.done
	if err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	return nil
}
