package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// metricValue returns the value of one unlabelled series on /metrics, "" when absent.
func metricValue(t *testing.T, addr, name string) string {
	t.Helper()
	_, body := daemonGet(t, "http://"+addr+"/metrics")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestReadyzFollowsTheLastAnswer: one failed request (a 5xx after the retries) turns
// /readyz to 503 at once, naming the cloud, the reason and since when, and
// imagekeeper_cloud_up to 0; the first success turns both back. The old /readyz
// stayed 200 for five minutes after the last good answer.
func TestReadyzFollowsTheLastAnswer(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.sim.AddServer(simcloud.ServerSpec{Name: "web", Tags: []string{"a"}})
	e.writeConfig(policyYAML("a", "@every 1s", "a", ""))
	r := e.start()
	eventually(t, "a first good slot", 20*time.Second, func() bool {
		return countOutcome(slotsOf(t, r.st, "a"), store.OutcomeRan) > 0
	})
	if code, body := daemonGet(t, "http://"+r.addr+"/readyz"); code != 200 {
		t.Fatalf("/readyz with a healthy cloud = %d %q", code, body)
	}
	if v := metricValue(t, r.addr, "imagekeeper_cloud_up"); v != "1" {
		t.Fatalf("imagekeeper_cloud_up = %q with a healthy cloud, want 1", v)
	}

	// The whole cloud answers 503: with only one operation failing, a success of
	// another (an image poll) rightly makes the daemon ready again in between.
	e.sim.SetFault(simcloud.Fault{Op: "*", ErrorStatus: 503})
	var body string
	eventually(t, "/readyz 503 after a failed listing", 15*time.Second, func() bool {
		var code int
		code, body = daemonGet(t, "http://"+r.addr+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	if !regexp.MustCompile(`cloud: down since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: [^\n]*\(HTTP 503\)`).MatchString(body) ||
		!strings.Contains(body, "store: ok") {
		t.Fatalf("/readyz during the outage:\n%s", body)
	}
	if v := metricValue(t, r.addr, "imagekeeper_cloud_up"); v != "0" {
		t.Fatalf("imagekeeper_cloud_up = %q during the outage, want 0", v)
	}

	e.sim.ClearFaults()
	eventually(t, "/readyz 200 after the first success", 15*time.Second, func() bool {
		code, _ := daemonGet(t, "http://"+r.addr+"/readyz")
		return code == http.StatusOK
	})
	if v := metricValue(t, r.addr, "imagekeeper_cloud_up"); v != "1" {
		t.Fatalf("imagekeeper_cloud_up = %q after recovery, want 1", v)
	}
}

// TestDaemonStartsWithoutTheCloud starts the daemon with a wrong password: it does not
// exit but tells systemd READY=1, serves /healthz (200), /metrics
// (imagekeeper_cloud_up 0) and a /readyz that names the cloud and says in words who
// was refused where, never the response body. Once the password is right, it
// connects on a later attempt and runs the due slots.
func TestDaemonStartsWithoutTheCloud(t *testing.T) {
	e := newEnv(t, simcloud.Options{Password: "right-pw"})
	e.sim.AddServer(simcloud.ServerSpec{Name: "web", Tags: []string{"a"}})
	e.writeConfig(policyYAML("a", "@every 1s", "a", ""))
	good := e.sim.CloudsYAML("sim")
	if err := os.WriteFile(e.clouds, []byte(strings.Replace(string(good), "right-pw", "wrong-pw", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	notifyPath, nextNotify := notifySocket(t)

	r := &running{sigs: make(chan os.Signal, 4), done: make(chan error, 1), logs: &syncBuffer{}}
	started := make(chan *store.Store, 1)
	ctx, reload, abort := signalled(t, r.sigs)
	d := &Daemon{
		ConfigPath:   e.config,
		DrainTimeout: 30 * time.Second,
		Logger:       slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Getenv: func(k string) string {
			if k == "NOTIFY_SOCKET" {
				return notifyPath
			}
			return ""
		},
		Reload:             reload,
		Abort:              abort,
		Listen:             addr,
		WatchInterval:      50 * time.Millisecond,
		RunnerPollInterval: 50 * time.Millisecond,
		ConnectBackoff:     100 * time.Millisecond,
		ConnectMaxBackoff:  200 * time.Millisecond,
		NewCloud: func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
			return openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log,
				RetryBaseDelay: 10 * time.Millisecond,
				ParseOptions:   []clouds.ParseOption{clouds.WithLocations(e.clouds)}})
		},
		Started: func(_ string, st *store.Store) { started <- st },
	}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() {
		r.sigs <- syscall.SIGTERM
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Errorf("daemon did not stop")
		}
	})

	if got := nextNotify(); got != "READY=1" {
		t.Fatalf("first sd_notify state %q, want READY=1", got)
	}
	eventually(t, "/healthz", 10*time.Second, func() bool {
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("daemon exited with the cloud refusing it: %v\n%s", err, r.logs)
		default:
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	want := fmt.Sprintf("authentication failed for user %s at %s/identity/v3: 401", e.sim.Options().Username, e.sim.URL())
	var code int
	var body string
	eventually(t, "/readyz naming the refusal", 10*time.Second, func() bool {
		code, body = daemonGet(t, "http://"+addr+"/readyz")
		return strings.Contains(body, want)
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "cloud: down since") {
		t.Fatalf("/readyz with the password refused = %d\n%s\nwant it to contain %q", code, body, want)
	}
	if v := metricValue(t, addr, "imagekeeper_cloud_up"); v != "0" {
		t.Fatalf("imagekeeper_cloud_up = %q, want 0", v)
	}
	eventually(t, "a second attempt", 10*time.Second, func() bool {
		return strings.Count(r.logs.String(), "cannot connect to the cloud") >= 2
	})
	logs := r.logs.String()
	if !strings.Contains(logs, want) || strings.Contains(logs, "Unauthorized") || strings.Contains(logs, "{") {
		t.Fatalf("the log does not say the password was refused in words, or dumps a body:\n%s", logs)
	}

	if err := os.WriteFile(e.clouds, good, 0o600); err != nil {
		t.Fatal(err)
	}
	var st *store.Store
	select {
	case st = <-started:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not connect once the password was right\n%s", r.logs)
	}
	eventually(t, "a slot once the cloud answers", 20*time.Second, func() bool {
		return countOutcome(slotsOf(t, st, "a"), store.OutcomeRan, store.OutcomeCaughtUp) > 0
	})
	if code, body := daemonGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Fatalf("/readyz after connecting = %d\n%s", code, body)
	}
	if v := metricValue(t, addr, "imagekeeper_cloud_up"); v != "1" {
		t.Fatalf("imagekeeper_cloud_up = %q after connecting, want 1", v)
	}
}

// TestDaemonStopsWhileWaitingForTheCloud: with Keystone unreachable the daemon
// serves a /readyz that says so, and SIGTERM stops it cleanly (exit 0, an audit line)
// without ever having connected.
func TestDaemonStopsWhileWaitingForTheCloud(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	// Nothing listens at the auth URL: connection refused. (Closing the simulator
	// would free its port for any other test's listener to take meanwhile.)
	refused := strings.ReplaceAll(string(e.sim.CloudsYAML("sim")), e.sim.URL(), "http://"+refusedAddr(t))
	if err := os.WriteFile(e.clouds, []byte(refused), 0o600); err != nil {
		t.Fatal(err)
	}
	listening := make(chan string, 1)
	sigs := make(chan os.Signal, 1)
	ctx, reload, abort := signalled(t, sigs)
	logs := &syncBuffer{}
	d := &Daemon{
		ConfigPath: e.config, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Getenv: func(string) string { return "" }, Reload: reload, Abort: abort, WatchInterval: 50 * time.Millisecond,
		ConnectBackoff: 50 * time.Millisecond, ConnectMaxBackoff: 100 * time.Millisecond,
		NewCloud: func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
			return openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log,
				RetryBaseDelay: 5 * time.Millisecond, ParseOptions: []clouds.ParseOption{clouds.WithLocations(e.clouds)}})
		},
		Listening: func(addr string) { listening <- addr },
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var addr string
	select {
	case addr = <-listening:
	case err := <-done:
		t.Fatalf("daemon exited without the cloud: %v\n%s", err, logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon did not serve\n%s", logs)
	}
	var body string
	eventually(t, "/readyz naming the refused connection", 10*time.Second, func() bool {
		var code int
		code, body = daemonGet(t, "http://"+addr+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "connection refused")
	})
	if !strings.Contains(body, "cloud: down since") || !strings.Contains(body, "config: ok") {
		t.Fatalf("/readyz:\n%s", body)
	}
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stop before the cloud answered: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon did not stop while waiting for the cloud\n%s", logs)
	}
	st := storetest.MustOpenAt(t, e.state, nil)
	evs, err := st.Events(context.Background(), store.EventFilter{Kind: eventDaemonStopped})
	if err != nil || len(evs) != 1 || !strings.Contains(evs[0].Message, "before the cloud answered") {
		t.Fatalf("stop events %+v, %v", evs, err)
	}
}
