package openstack_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// simOps maps the contract's operations to the simulator's operation names.
var simOps = map[cloudtest.Op]string{
	cloudtest.OpListServers:    "compute.servers.list",
	cloudtest.OpGetServer:      "compute.servers.get",
	cloudtest.OpCreateImage:    "compute.createImage",
	cloudtest.OpGetImage:       "image.get",
	cloudtest.OpListImages:     "image.list",
	cloudtest.OpDeleteImage:    "image.delete",
	cloudtest.OpGetSnapshot:    "volume.snapshots.get",
	cloudtest.OpListSnapshots:  "volume.snapshots.list",
	cloudtest.OpDeleteSnapshot: "volume.snapshots.delete",
	cloudtest.OpCreateServer:   "compute.servers.create",
	cloudtest.OpDeleteServer:   "compute.servers.delete",
	cloudtest.OpConsoleOutput:  "compute.servers.console",
	cloudtest.OpGetVolume:      "volume.volumes",
	cloudtest.OpDeleteVolume:   "volume.volumes.delete",
}

// simEnv is one simulator behind a real HTTP server, and the adapter's view of it.
type simEnv struct {
	sim *simcloud.Sim
	srv *httptest.Server
	// emptyID, when > 0, makes that many createImage answers lose their image id
	// (the request still reaches the simulator and makes the image).
	emptyID atomic.Int32
	// middle, when set, sees every request before the simulator.
	middle func(w http.ResponseWriter, r *http.Request, next http.Handler)
}

func newSim(t *testing.T, opts simcloud.Options) *simEnv {
	t.Helper()
	e := &simEnv{sim: simcloud.New(opts)}
	h := e.sim.Handler()
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e.middle != nil {
			e.middle(w, r, h)
			return
		}
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/action") && e.emptyID.Add(-1) >= 0 {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				if k != "Location" && k != "Content-Length" {
					w.Header()[k] = v
				}
			}
			w.WriteHeader(rec.Code)
			return
		}
		h.ServeHTTP(w, r)
	}))
	e.sim.SetBaseURL(e.srv.URL)
	t.Cleanup(func() {
		e.sim.Close()
		e.srv.Close()
	})
	return e
}

type clientConfig struct {
	appCred bool
	opts    openstack.Options
}

func (e *simEnv) client(t *testing.T, cfg clientConfig) (*openstack.Client, error) {
	t.Helper()
	yaml := e.sim.CloudsYAML("sim")
	if cfg.appCred {
		yaml = e.sim.CloudsYAMLAppCredential("sim")
	}
	o := cfg.opts
	o.CloudName = "sim"
	o.ParseOptions = append(o.ParseOptions, clouds.WithCloudsYAML(bytes.NewReader(yaml)))
	if o.RetryBaseDelay == 0 {
		o.RetryBaseDelay = 5 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return openstack.New(ctx, o)
}

func (e *simEnv) mustClient(t *testing.T, cfg clientConfig) *openstack.Client {
	t.Helper()
	c, err := e.client(t, cfg)
	if err != nil {
		t.Fatalf("openstack.New: %v", err)
	}
	return c
}

// testWriter sends log lines to t.Log, so that they show only for failed tests.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// controller adapts the simulator's controls to cloudtest.Controller.
type controller struct{ e *simEnv }

func (c controller) AddServer(s cloudtest.ServerSpec) string {
	return c.e.sim.AddServer(simcloud.ServerSpec{Name: s.Name, Status: s.Status, TaskState: s.TaskState, AZ: s.AZ, Tags: s.Tags, Volumes: s.Volumes})
}
func (c controller) SetServerStatus(id, status string)    { c.e.sim.SetServerStatus(id, status) }
func (c controller) SetServerTaskState(id, ts string)     { c.e.sim.SetServerTaskState(id, ts) }
func (c controller) Advance(d time.Duration)              { c.e.sim.Advance(d) }
func (c controller) FailNextSnapshot(id string)           { c.e.sim.FailNextSnapshot(id) }
func (c controller) SetImageProtected(id string, p bool)  { c.e.sim.SetImageProtected(id, p) }
func (c controller) AddVolumeFromSnapshot(id string)      { c.e.sim.AddVolumeFromSnapshot(id) }
func (c controller) ExpireTokens()                        { c.e.sim.ExpireTokens() }
func (c controller) Requests(op cloudtest.Op) int         { return c.e.sim.Requests()[simOps[op]] }
func (c controller) CreateImageCalls(serverID string) int { return c.e.sim.CreateImageCalls(serverID) }
func (c controller) FailNextBoot(reason string)           { c.e.sim.FailNextBoot(reason) }
func (c controller) SetInstanceQuota(n int)               { c.e.sim.SetInstanceQuota(n) }
func (c controller) VolumesFromSnapshots() []cloud.Volume {
	var out []cloud.Volume
	for _, v := range c.e.sim.Volumes() {
		cv := cloud.Volume{ID: v.ID, Status: v.Status, SnapshotID: v.SnapshotID}
		if v.ServerID != "" {
			cv.AttachedTo = []string{v.ServerID}
		}
		out = append(out, cv)
	}
	return out
}
func (c controller) InjectFault(f cloudtest.Fault) bool {
	n := f.Count
	if n <= 0 {
		n = 1
	}
	if f.EmptyImageID {
		c.e.emptyID.Store(int32(n))
		return true
	}
	sf := simcloud.Fault{Op: simOps[f.Op], ErrorStatus: f.Status, Count: n}
	if f.Status == http.StatusTooManyRequests {
		sf = simcloud.Fault{Op: simOps[f.Op], Status429RetryAfter: f.RetryAfter, Count: n}
	}
	c.e.sim.SetFault(sf)
	return true
}

func newContractEnv(computeVersion string, projectInURL bool, wantMV string) func(t *testing.T, o cloudtest.EnvOptions) cloudtest.Env {
	return func(t *testing.T, o cloudtest.EnvOptions) cloudtest.Env {
		e := newSim(t, simcloud.Options{ComputeVersion: computeVersion, MaxLimit: o.PageSize, ComputeProjectID: projectInURL})
		c := e.mustClient(t, clientConfig{opts: openstack.Options{PageSize: o.PageSize}})
		if got := c.Microversion(); got != wantMV {
			t.Fatalf("cloud max %q: client uses %s, want %s", computeVersion, got, wantMV)
		}
		return cloudtest.Env{Cloud: c, Ctl: controller{e}, Retries: true, Paged: o.PageSize > 0, Settle: time.Hour}
	}
}

// TestContractAgainstSimulator runs the contract over real HTTP against clouds
// whose highest compute microversion is 2.26 (image id in Location), 2.45, 2.60
// (Huawei) and 2.93 (Zed, the simulator's default), each with the compute endpoint
// as Zed publishes it (no project id) and in Huawei's documented form
// (/v2.1/{project_id}). Below 2.26 New refuses the cloud (TestRefusesCloudAt21).
func TestContractAgainstSimulator(t *testing.T) {
	for _, v := range []struct{ max, use string }{{"2.26", "2.26"}, {"2.45", "2.45"}, {"2.60", "2.45"}, {"", "2.45"}} {
		for _, projectInURL := range []bool{false, true} {
			name := "max=" + v.max
			if v.max == "" {
				name = "max=default"
			}
			if projectInURL {
				name += "/endpoint=v2.1-project"
			} else {
				name += "/endpoint=v2.1"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				cloudtest.Run(t, newContractEnv(v.max, projectInURL, v.use))
			})
		}
	}
}

// observed collects Observe calls.
type observed struct {
	mu   sync.Mutex
	reqs []openstack.Request
}

func (o *observed) add(r openstack.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reqs = append(o.reqs, r)
}

func (o *observed) count(service, op string, status int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, r := range o.reqs {
		if r.Service == service && r.Operation == op && r.Status == status {
			n++
		}
	}
	return n
}

func (o *observed) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b strings.Builder
	for _, r := range o.reqs {
		fmt.Fprintf(&b, "%s/%s %d; ", r.Service, r.Operation, r.Status)
	}
	return b.String()
}

var _ io.Writer = testWriter{}
