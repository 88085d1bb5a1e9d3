package main

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHTTPServerEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "imagekeeper_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	var storeDown atomic.Bool
	checks := []readinessCheck{
		{"config", func(context.Context) error { return nil }},
		{"store", func(context.Context) error {
			if storeDown.Load() {
				return errors.New("database is locked")
			}
			return nil
		}},
	}
	srv, err := startHTTP("127.0.0.1:0", reg, checks, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.Addr()

	if code, body := daemonGet(t, base+"/metrics"); code != 200 || !strings.Contains(body, "imagekeeper_test_total 3") {
		t.Fatalf("/metrics = %d\n%s", code, body)
	}
	if code, body := daemonGet(t, base+"/readyz"); code != 200 || body != "config: ok\nstore: ok\n" {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	storeDown.Store(true)
	if code, body := daemonGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "store: database is locked") {
		t.Fatalf("/readyz with the store down = %d %q", code, body)
	}
	storeDown.Store(false)
	srv.Draining()
	if code, body := daemonGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "daemon: shutting down") {
		t.Fatalf("/readyz while draining = %d %q", code, body)
	}
	if code, _ := daemonGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz while draining = %d, want 200", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := startHTTP(srv.Addr(), reg, nil, discardLogger())
	if err != nil {
		t.Fatalf("port not released after shutdown: %v", err)
	}
	again.Shutdown(ctx)
}

func TestHTTPServerPortTaken(t *testing.T) {
	srv, err := startHTTP("127.0.0.1:0", prometheus.NewRegistry(), nil, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	_, err = startHTTP(srv.Addr(), prometheus.NewRegistry(), nil, discardLogger())
	if err == nil || !strings.Contains(err.Error(), srv.Addr()) {
		t.Fatalf("second listener on %s: %v", srv.Addr(), err)
	}
}
