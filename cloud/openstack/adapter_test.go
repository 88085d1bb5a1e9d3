package openstack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestMicroversionNegotiation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ cloudMax, want string }{
		{"", "2.45"},     // simulator default 2.93, as Zed
		{"2.60", "2.45"}, // Huawei ECS
		{"2.90", "2.45"},
		{"2.44", "2.44"},
		{"2.26", "2.26"},
	} {
		e := newSim(t, simcloud.Options{ComputeVersion: tc.cloudMax})
		c := e.mustClient(t, clientConfig{})
		if got := c.Microversion(); got != tc.want {
			t.Errorf("cloud max %q: microversion %s, want %s", tc.cloudMax, got, tc.want)
		}
	}
}

// TestRefusesCloudBelow226: below 2.26 Nova ignores tag filters and returns every
// server, and does not even return tags to filter on: refuse at start.
func TestRefusesCloudBelow226(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{ComputeVersion: "2.25"})
	e.sim.AddServer(simcloud.ServerSpec{Tags: []string{"backup"}})
	_, err := e.client(t, clientConfig{})
	if !errors.Is(err, openstack.ErrMicroversion) {
		t.Fatalf("New against a 2.25 cloud: %v, want ErrMicroversion", err)
	}
	for _, want := range []string{"2.25", "2.26", "tag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if n := e.sim.Requests()["compute.servers.list"]; n != 0 {
		t.Errorf("servers listed %d times by a refused client", n)
	}
}

// TestPinnedMicroversion21: createImage answers with Location (and text/html), and
// a tag selector is refused instead of returning every server.
func TestPinnedMicroversion21(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	srv := e.sim.AddServer(simcloud.ServerSpec{Name: "web", Tags: []string{"backup"}})
	e.sim.AddServer(simcloud.ServerSpec{Name: "other", Tags: []string{"other"}})
	c := e.mustClient(t, clientConfig{opts: openstack.Options{ComputeMicroversion: "2.1"}})

	var locations []string
	var mu sync.Mutex
	e.middle = func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		if strings.HasSuffix(r.URL.Path, "/action") {
			mu.Lock()
			locations = append(locations, rec.Header().Get("Location")+" "+rec.Header().Get("X-Openstack-Nova-Api-Version"))
			mu.Unlock()
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	}
	id, err := c.CreateImage(ctx(t), srv, "at-2.1", map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	if im, ok := e.sim.Image(id); !ok || im.ServerID != srv {
		t.Errorf("id %q from Location is not the simulator's image of %s", id, srv)
	}
	if len(locations) != 1 || !strings.HasSuffix(strings.Fields(locations[0])[0], "/images/"+id) || !strings.HasSuffix(locations[0], " 2.1") {
		t.Errorf("createImage answers = %q, want one Location ending in /images/%s at 2.1", locations, id)
	}

	before := e.sim.Requests()["compute.servers.list"]
	_, err = c.ListServers(ctx(t), cloud.Selector{Tags: []string{"backup"}})
	if !errors.Is(err, cloud.ErrInvalid) || !strings.Contains(cloud.Reason(err), "2.26") {
		t.Errorf("ListServers(tags) at 2.1: %v, want ErrInvalid naming 2.26", err)
	}
	if n := e.sim.Requests()["compute.servers.list"] - before; n != 0 {
		t.Errorf("list requests at 2.1 = %d, want none", n)
	}
	all, err := c.ListServers(ctx(t), cloud.Selector{})
	if err != nil || len(all) != 2 {
		t.Errorf("ListServers(no tags) at 2.1 = %d servers, %v; want both", len(all), err)
	}
}

// TestMicroversionDroppedOnTheWay: a proxy that strips the microversion headers
// makes Nova answer at 2.1 and ignore the filters; the adapter notices the missing
// tags and refuses instead of selecting every server.
func TestMicroversionDroppedOnTheWay(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	e.sim.AddServer(simcloud.ServerSpec{Tags: []string{"backup"}})
	e.sim.AddServer(simcloud.ServerSpec{Tags: []string{"other"}})
	c := e.mustClient(t, clientConfig{})
	e.middle = func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		r.Header.Del("X-OpenStack-Nova-API-Version")
		r.Header.Del("OpenStack-API-Version")
		next.ServeHTTP(w, r)
	}
	got, err := c.ListServers(ctx(t), cloud.Selector{Tags: []string{"backup"}})
	if !errors.Is(err, cloud.ErrInvalid) || got != nil {
		t.Fatalf("ListServers through a header-stripping proxy = %v, %v; want ErrInvalid and nothing", got, err)
	}
}

// TestImageIDWithCharsetContentType: gophercloud's own CreateImage returns an
// empty id with no error when the body is "application/json; charset=UTF-8".
func TestImageIDWithCharsetContentType(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	srv := e.sim.AddServer(simcloud.ServerSpec{})
	c := e.mustClient(t, clientConfig{})
	e.middle = func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		if strings.HasSuffix(r.URL.Path, "/action") {
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("simulator answered createImage at 2.45 with Content-Type %q, want application/json", ct)
			}
			w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	}
	id, err := c.CreateImage(ctx(t), srv, "charset", nil)
	if err != nil || id == "" {
		t.Fatalf("CreateImage = %q, %v", id, err)
	}
	if _, ok := e.sim.Image(id); !ok {
		t.Errorf("id %q is not the simulator's", id)
	}
}

// TestCreateImage429IsRetried: a 429 means the request was refused before Nova saw
// it, so createImage is repeated after Retry-After.
func TestCreateImage429IsRetried(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	srv := e.sim.AddServer(simcloud.ServerSpec{})
	c := e.mustClient(t, clientConfig{})
	e.sim.SetFault(simcloud.Fault{Op: "compute.createImage", Status429RetryAfter: time.Second, Count: 1})
	start := time.Now()
	id, err := c.CreateImage(ctx(t), srv, "throttled", nil)
	if err != nil || id == "" {
		t.Fatalf("CreateImage after a 429 = %q, %v", id, err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("retried after %v, before Retry-After 1s", d)
	}
	if n := e.sim.CreateImageCalls(srv); n != 2 {
		t.Errorf("createImage calls = %d, want 2 (the 429 and the retry)", n)
	}
	if n := len(e.sim.Images()); n != 1 {
		t.Errorf("images = %d, want 1", n)
	}
}

func TestDeadlines(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	srv := e.sim.AddServer(simcloud.ServerSpec{})
	c := e.mustClient(t, clientConfig{opts: openstack.Options{RequestTimeout: 300 * time.Millisecond, CreateImageTimeout: 300 * time.Millisecond}})
	e.sim.SetFault(simcloud.Fault{Op: "compute.servers.get", Hang: true})
	e.sim.SetFault(simcloud.Fault{Op: "compute.createImage", Hang: true})

	_, err := c.GetServer(ctx(t), srv)
	if !errors.Is(err, cloud.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GetServer against a hanging cloud: %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	_, err = c.CreateImage(ctx(t), srv, "hung", nil)
	if !errors.Is(err, cloud.ErrUnknownOutcome) {
		t.Errorf("CreateImage against a hanging cloud: %v, want ErrUnknownOutcome", err)
	}
	if n := e.sim.CreateImageCalls(srv); n != 1 {
		t.Errorf("createImage calls = %d, want 1", n)
	}
}

// TestConnectionRefused: a request that never left cannot have made an image.
func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	srv := e.sim.AddServer(simcloud.ServerSpec{})
	// No idle connections: a request on a reused connection that the server closes
	// under it may have been sent, and is rightly reported as unknown.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	c := e.mustClient(t, clientConfig{opts: openstack.Options{MaxRetries: 1, HTTPClient: &http.Client{Transport: tr}}})
	e.srv.Close()
	_, err := c.CreateImage(ctx(t), srv, "x", nil)
	if !errors.Is(err, cloud.ErrUnavailable) || errors.Is(err, cloud.ErrUnknownOutcome) {
		t.Errorf("CreateImage with the cloud down: %v, want ErrUnavailable (never sent)", err)
	}
}

func TestObserveAndReauth(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{})
	e.sim.AddServer(simcloud.ServerSpec{Tags: []string{"b"}})
	var obs observed
	c := e.mustClient(t, clientConfig{opts: openstack.Options{Observe: obs.add}})
	if obs.count("identity", "token", 201) != 1 || obs.count("compute", "versions", 200) != 1 {
		t.Errorf("start-up requests observed: %s", &obs)
	}
	if _, err := c.ListServers(ctx(t), cloud.Selector{Tags: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	e.sim.ExpireTokens()
	if _, err := c.ListServers(ctx(t), cloud.Selector{Tags: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	if obs.count("compute", "list_servers", 200) != 2 || obs.count("compute", "list_servers", 401) != 1 || obs.count("identity", "token", 201) != 2 {
		t.Errorf("observed: %s; want 2 lists OK, one 401, two tokens", &obs)
	}
	e.sim.SetFault(simcloud.Fault{Op: "image.get", ErrorStatus: 503, Count: 1})
	if _, err := c.GetImage(ctx(t), "00000000-0000-4000-8000-000000000000"); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("GetImage(unknown) after a 503: %v, want ErrNotFound", err)
	}
	if obs.count("image", "get_image", 503) != 1 || obs.count("image", "get_image", 404) != 1 {
		t.Errorf("observed: %s; want one 503 and one 404 for get_image", &obs)
	}
}

func TestApplicationCredential(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{AppCredentialID: "ac-1", AppCredentialSecret: "ac-secret-XYZ"})
	e.sim.AddServer(simcloud.ServerSpec{Tags: []string{"b"}})
	c := e.mustClient(t, clientConfig{appCred: true})
	e.sim.ExpireTokens()
	got, err := c.ListServers(ctx(t), cloud.Selector{Tags: []string{"b"}})
	if err != nil || len(got) != 1 {
		t.Fatalf("ListServers with an application credential after expiry: %v, %v", got, err)
	}
}

// TestLogsHoldNoSecrets runs start-up, retries and a re-authentication with debug
// logging and checks that neither the password nor any token shows up.
func TestLogsHoldNoSecrets(t *testing.T) {
	t.Parallel()
	const password = "pw-Do-Not-Log-7731"
	e := newSim(t, simcloud.Options{Password: password})
	srv := e.sim.AddServer(simcloud.ServerSpec{Tags: []string{"b"}})
	var mu sync.Mutex
	tokens := map[string]bool{}
	e.middle = func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		mu.Lock()
		if tok := r.Header.Get("X-Auth-Token"); tok != "" {
			tokens[tok] = true
		}
		mu.Unlock()
		next.ServeHTTP(w, r)
	}
	var buf bytes.Buffer
	var bufMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&bufMu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := e.mustClient(t, clientConfig{opts: openstack.Options{Logger: logger}})
	e.sim.SetFault(simcloud.Fault{Op: "compute.servers.get", ErrorStatus: 503, Count: 2})
	e.sim.ExpireTokens()
	if _, err := c.GetServer(ctx(t), srv); err != nil {
		t.Fatal(err)
	}
	e.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 500, Count: 1})
	_, err := c.CreateImage(ctx(t), srv, "x", nil)
	if !errors.Is(err, cloud.ErrUnknownOutcome) {
		t.Fatalf("CreateImage answered 500: %v", err)
	}
	bufMu.Lock()
	out := buf.String() + err.Error()
	bufMu.Unlock()
	if !strings.Contains(out, "retrying") {
		t.Fatalf("no retry was logged, the test proves nothing:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tokens) < 2 {
		t.Fatalf("saw %d tokens, want at least 2 (re-authentication)", len(tokens))
	}
	if strings.Contains(out, password) {
		t.Errorf("the password is in the logs:\n%s", out)
	}
	for tok := range tokens {
		if strings.Contains(out, tok) {
			t.Errorf("a token is in the logs:\n%s", out)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestWrongPasswordInWords starts the adapter with a wrong password: the error says
// who was refused where, matches ErrAuthentication, and carries no response body.
func TestWrongPasswordInWords(t *testing.T) {
	t.Parallel()
	e := newSim(t, simcloud.Options{Password: "right-password"})
	yaml := strings.Replace(string(e.sim.CloudsYAML("sim")), "right-password", "wrong-password", 1)
	_, err := openstack.New(ctx(t), openstack.Options{CloudName: "sim", RetryBaseDelay: time.Millisecond,
		ParseOptions: []clouds.ParseOption{clouds.WithCloudsYAML(strings.NewReader(yaml))}})
	if err == nil {
		t.Fatal("New with a wrong password succeeded")
	}
	user := e.sim.Options().Username
	want := fmt.Sprintf("authentication failed for user %s at %s/identity/v3: 401", user, e.srv.URL)
	if err.Error() != want || !errors.Is(err, openstack.ErrAuthentication) {
		t.Fatalf("error = %q (ErrAuthentication: %v)\nwant    %q", err, errors.Is(err, openstack.ErrAuthentication), want)
	}
}
