package simcloud

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var epoch = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// harness is a simulator behind httptest with a frozen clock that only Advance
// moves, and a token.
type harness struct {
	t     *testing.T
	sim   *Sim
	srv   *httptest.Server
	token string
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return epoch }
	}
	sim := New(opts)
	srv := httptest.NewServer(sim.Handler())
	sim.SetBaseURL(srv.URL)
	t.Cleanup(func() { srv.Close(); _ = sim.Close() })
	h := &harness{t: t, sim: sim, srv: srv}
	h.token = h.authenticate()
	return h
}

func (h *harness) authenticate() string {
	h.t.Helper()
	o := h.sim.Options()
	body := `{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "` + o.Username +
		`", "domain": {"name": "` + o.DomainName + `"}, "password": "` + o.Password + `"}}},
		"scope": {"project": {"name": "` + o.ProjectName + `", "domain": {"name": "` + o.DomainName + `"}}}}}`
	resp, _ := h.do("POST", "/identity/v3/auth/tokens", body, nil)
	if resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("auth: status %d", resp.StatusCode)
	}
	tok := resp.Header.Get("X-Subject-Token")
	if tok == "" {
		h.t.Fatal("auth: no X-Subject-Token")
	}
	return tok
}

// do sends a request with the harness token (unless headers set X-Auth-Token).
func (h *harness) do(method, path, body string, headers map[string]string) (*http.Response, []byte) {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	url := path
	if !strings.HasPrefix(path, "http") {
		url = h.srv.URL + path
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.token != "" {
		req.Header.Set("X-Auth-Token", h.token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp, b
}

// compute sends a compute request at microversion mv ("" for none).
func (h *harness) compute(method, path, body, mv string) (*http.Response, []byte) {
	h.t.Helper()
	hd := map[string]string{}
	if mv != "" {
		hd["X-OpenStack-Nova-API-Version"] = mv
	}
	return h.do(method, "/compute/v2.1/"+h.sim.Options().ProjectID+path, body, hd)
}

func (h *harness) volume(method, path string) (*http.Response, []byte) {
	h.t.Helper()
	return h.do(method, "/volume/v3/"+h.sim.Options().ProjectID+path, "", nil)
}

// createImage runs createImage at 2.45 and returns the image id.
func (h *harness) createImage(serverID, name string, meta map[string]string) string {
	h.t.Helper()
	args := map[string]any{"name": name}
	if meta != nil {
		args["metadata"] = meta
	}
	body := map[string]any{"createImage": args}
	b, _ := json.Marshal(body)
	resp, out := h.compute("POST", "/servers/"+serverID+"/action", string(b), "2.45")
	if resp.StatusCode != http.StatusAccepted {
		h.t.Fatalf("createImage %s: %d %s", serverID, resp.StatusCode, out)
	}
	var r struct {
		ImageID string `json:"image_id"`
	}
	mustJSON(h.t, out, &r)
	if r.ImageID == "" {
		h.t.Fatalf("createImage: empty id in %s", out)
	}
	return r.ImageID
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

func (h *harness) getJSON(path string, v any) int {
	h.t.Helper()
	resp, b := h.do("GET", path, "", map[string]string{"Accept": "application/json"})
	if resp.StatusCode == http.StatusOK {
		mustJSON(h.t, b, v)
	}
	return resp.StatusCode
}

func (h *harness) imageStatus(id string) (string, int) {
	h.t.Helper()
	var im map[string]any
	code := h.getJSON("/image/v2/images/"+id, &im)
	s, _ := im["status"].(string)
	return s, code
}

func (h *harness) snapshotStatus(id string) (string, int) {
	h.t.Helper()
	var body struct {
		Snapshot struct {
			Status string `json:"status"`
		} `json:"snapshot"`
	}
	code := h.getJSON("/volume/v3/"+h.sim.Options().ProjectID+"/snapshots/"+id, &body)
	return body.Snapshot.Status, code
}

func (h *harness) taskState(serverID string) any {
	h.t.Helper()
	_, b := h.compute("GET", "/servers/"+serverID, "", "2.60")
	var body struct {
		Server map[string]any `json:"server"`
	}
	mustJSON(h.t, b, &body)
	return body.Server["OS-EXT-STS:task_state"]
}

func jsonEqual(t *testing.T, got []byte, want string) {
	t.Helper()
	if !bytes.Equal(bytes.TrimSpace(got), []byte(want)) {
		t.Errorf("body:\n got %s\nwant %s", got, want)
	}
}
