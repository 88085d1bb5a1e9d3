package simcloud_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// fuzzRoutes are request paths that reach every handler of the simulator; the
// placeholders are replaced by ids that exist, so the fuzzer spends its time on the
// request decoding behind the route rather than on 404s.
var fuzzRoutes = []string{
	"/identity/v3/auth/tokens",
	"/identity/v3",
	"/compute/v2.1/{project}/servers/{server}/action",
	"/compute/v2.1/{project}/servers/{vserver}/action",
	"/compute/v2.1/servers/{server}/action",
	"/compute/v2.1/{project}/servers/detail",
	"/compute/v2.1/{project}/servers",
	"/compute/v2.1/{project}/servers/{server}",
	"/compute/v2.1/{project}/servers/{server}/tags",
	"/compute/v2.1/{project}/flavors/detail",
	"/compute/v2.1/",
	"/image/v2/images",
	"/image/v2/images/{image}",
	"/image/v2/images/{vimage}",
	"/image/v2/schemas/image",
	"/image/versions",
	"/volume/v3/{project}/snapshots/detail",
	"/volume/v3/{project}/snapshots",
	"/volume/v3/{project}/snapshots/{snapshot}",
	"/_sim/servers",
	"/_sim/servers/{server}",
	"/_sim/servers/{server}/fail-next-snapshot",
	"/_sim/images",
	"/_sim/images/{image}",
	"/_sim/snapshots",
	"/_sim/snapshots/{snapshot}/volumes",
	"/_sim/faults",
	"/_sim/faults/1",
	"/_sim/advance",
	"/_sim/state",
	"/_sim/clouds.yaml",
}

var fuzzMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodHead}

// fuzzSim is a simulator with one server of each kind, an image of each kind and a
// snapshot, and a valid token; all ids are repeatable (seeded).
type fuzzSim struct {
	sim                                      *simcloud.Sim
	h                                        http.Handler
	token                                    string
	server, vserver, image, vimage, snapshot string
}

func newFuzzSim(t *testing.T) *fuzzSim {
	t.Helper()
	epoch := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	sim := simcloud.New(simcloud.Options{Seed: 1, Now: func() time.Time { return epoch }})
	sim.SetBaseURL("http://sim.invalid")
	fs := &fuzzSim{sim: sim, h: sim.Handler()}
	fs.server = sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"backup", "daily"}})
	fs.vserver = sim.AddServer(simcloud.ServerSpec{Name: "db-1", Volumes: 2, Tags: []string{"backup"}})
	o := sim.Options()
	auth := `{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "` + o.Username +
		`", "domain": {"name": "` + o.DomainName + `"}, "password": "` + o.Password + `"}}},
		"scope": {"project": {"name": "` + o.ProjectName + `", "domain": {"name": "` + o.DomainName + `"}}}}}`
	rec := fs.serve(http.MethodPost, "/identity/v3/auth/tokens", "", []byte(auth), "")
	if rec.Code != http.StatusCreated {
		t.Fatalf("auth: %d %s", rec.Code, rec.Body)
	}
	fs.token = rec.Header().Get("X-Subject-Token")
	for _, id := range []*string{&fs.image, &fs.vimage} {
		sv := fs.server
		if id == &fs.vimage {
			sv = fs.vserver
		}
		rec := fs.serve(http.MethodPost, "/compute/v2.1/"+o.ProjectID+"/servers/"+sv+"/action", "",
			[]byte(`{"createImage": {"name": "seed", "metadata": {"k": "v"}}}`), "2.45")
		var out struct {
			ImageID string `json:"image_id"`
		}
		if rec.Code != http.StatusAccepted || json.Unmarshal(rec.Body.Bytes(), &out) != nil || out.ImageID == "" {
			t.Fatalf("createImage: %d %s", rec.Code, rec.Body)
		}
		*id = out.ImageID
	}
	im, ok := sim.Image(fs.vimage)
	if !ok || len(im.SnapshotIDs) == 0 {
		t.Fatal("volume-backed image without snapshots")
	}
	fs.snapshot = im.SnapshotIDs[0]
	return fs
}

func (fs *fuzzSim) serve(method, path, query string, body []byte, mv string) *httptest.ResponseRecorder {
	target := path
	if query != "" {
		target += "?" + query
	}
	req := httptest.NewRequest(method, "http://sim.invalid/", bytes.NewReader(body))
	// Set the URL by hand: httptest.NewRequest panics on a target it cannot parse,
	// and the fuzzer's paths are arbitrary bytes.
	req.URL.Path = path
	req.URL.RawQuery = query
	req.RequestURI = target
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if fs.token != "" {
		req.Header.Set("X-Auth-Token", fs.token)
	}
	if mv != "" {
		req.Header.Set("X-OpenStack-Nova-API-Version", mv)
		req.Header.Set("OpenStack-API-Version", "compute "+mv)
	}
	rec := httptest.NewRecorder()
	fs.h.ServeHTTP(rec, req)
	return rec
}

// FuzzRequest sends one arbitrary request (method, route with real ids plus an
// arbitrary suffix, query, body, microversion) to the simulator's handler. No
// fault is installed, so the simulator must never panic and never answer 5xx:
// bad input is the client's fault, and Nova, Glance, Cinder and Keystone answer it
// with a 4xx. A 2xx or 4xx JSON answer must be valid JSON.
func FuzzRequest(f *testing.F) {
	f.Add(uint8(1), uint8(2), "", "", []byte(`{"createImage": {"name": "n", "metadata": {"a": "b"}}}`), "2.45")
	f.Add(uint8(1), uint8(3), "", "", []byte(`{"createImage": {"name": "n"}}`), "2.1")
	f.Add(uint8(1), uint8(2), "", "", []byte(`{"createImage": {"name": 5}}`), "2.45")
	f.Add(uint8(1), uint8(2), "", "", []byte(`{"createImage": {"name": "`+strings.Repeat("x", 300)+`"}}`), "latest")
	f.Add(uint8(1), uint8(2), "", "", []byte(`{"createImage": {"name": "n", "metadata": {"": "b"}}}`), "2.60")
	f.Add(uint8(1), uint8(2), "", "", []byte(`{"createImage": null, "pause": null}`), "2.99")
	f.Add(uint8(0), uint8(5), "", "tags=backup,daily&limit=1&marker=x", []byte(nil), "2.26")
	f.Add(uint8(0), uint8(5), "", "limit=-1&changes-since=yesterday&tags-any=", []byte(nil), "2.52")
	f.Add(uint8(0), uint8(11), "", "limit=abc&imagekeeper_owner=o&sort_key=created_at&sort_dir=up&status=in:active,queued", []byte(nil), "")
	f.Add(uint8(3), uint8(12), "", "", []byte(`[{"op": "replace", "path": "/protected", "value": "yes"}]`), "")
	f.Add(uint8(4), uint8(12), "", "", []byte(nil), "")
	f.Add(uint8(4), uint8(18), "", "", []byte(nil), "")
	f.Add(uint8(0), uint8(16), "", "limit=0&offset=-3&all_tenants=1", []byte(nil), "")
	f.Add(uint8(1), uint8(0), "", "nocatalog", []byte(`{"auth": {"identity": {"methods": ["token"], "token": {"id": 1}}}}`), "")
	f.Add(uint8(1), uint8(26), "", "", []byte(`{"op": "*", "latency": "1h", "error_rate": 2, "error_status": 99}`), "")
	f.Add(uint8(1), uint8(28), "", "", []byte(`{"duration": -5}`), "")
	f.Add(uint8(1), uint8(19), "", "", []byte(`{"volumes": -1, "status": "", "tags": null}`), "")
	f.Add(uint8(3), uint8(20), "/x", "", []byte(`{"tags": ["a", null]}`), "")
	f.Fuzz(func(t *testing.T, method, route uint8, suffix, query string, body []byte, mv string) {
		if len(body) > 1<<16 {
			return
		}
		fs := newFuzzSim(t)
		path := fuzzRoutes[int(route)%len(fuzzRoutes)]
		path = strings.NewReplacer("{project}", fs.sim.Options().ProjectID, "{server}", fs.server,
			"{vserver}", fs.vserver, "{image}", fs.image, "{vimage}", fs.vimage, "{snapshot}", fs.snapshot).Replace(path)
		path += suffix
		m := fuzzMethods[int(method)%len(fuzzMethods)]
		// A latency or hang fault would only delay later requests; there are none.
		rec := fs.serve(m, path, query, body, mv)
		if rec.Code >= 500 {
			t.Fatalf("%s %q ?%q mv %q body %q: %d %s", m, path, query, mv, body, rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); strings.HasPrefix(ct, "application/json") && rec.Body.Len() > 0 && m != http.MethodHead {
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %q: %d answer is not JSON: %q", m, path, rec.Code, rec.Body)
			}
		}
	})
}
