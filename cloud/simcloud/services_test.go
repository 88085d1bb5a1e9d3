package simcloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestKeystoneAuth(t *testing.T) {
	h := newHarness(t, Options{AppCredentialSecret: "s3cret"})
	o := h.sim.Options()
	h.token = ""
	post := func(body string) (*http.Response, []byte) {
		return h.do("POST", "/identity/v3/auth/tokens", body, nil)
	}
	resp, b := post(`{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "secret"}}}, "scope": {"project": {"id": "` + o.ProjectID + `"}}}}`)
	if resp.StatusCode != 201 || resp.Header.Get("X-Subject-Token") == "" {
		t.Fatalf("password auth: %d", resp.StatusCode)
	}
	var tok struct {
		Token struct {
			Catalog []struct {
				Type      string
				Endpoints []struct{ Interface, Region, URL string }
			}
			Project struct{ ID string }
		}
	}
	mustJSON(t, b, &tok)
	urls := map[string]string{}
	for _, c := range tok.Token.Catalog {
		if len(c.Endpoints) != 1 || c.Endpoints[0].Interface != "public" || c.Endpoints[0].Region != "RegionOne" {
			t.Errorf("catalog %s endpoints: %+v", c.Type, c.Endpoints)
			continue
		}
		urls[c.Type] = c.Endpoints[0].URL
	}
	want := map[string]string{
		"compute": h.srv.URL + "/compute/v2.1", "image": h.srv.URL + "/image",
		"block-storage": h.srv.URL + "/volume/v3/" + o.ProjectID, "volumev3": h.srv.URL + "/volume/v3/" + o.ProjectID,
		"identity": h.srv.URL + "/identity",
	}
	for k, v := range want {
		if urls[k] != v {
			t.Errorf("catalog %s = %q, want %q", k, urls[k], v)
		}
	}
	if tok.Token.Project.ID != o.ProjectID {
		t.Errorf("project %q", tok.Token.Project.ID)
	}
	for name, body := range map[string]string{
		"wrong password": `{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "nope"}}}}}`,
		"wrong project":  `{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "secret"}}}, "scope": {"project": {"id": "other"}}}}`,
		"app cred scope": `{"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": "` + o.AppCredentialID + `", "secret": "s3cret"}}, "scope": {"project": {"id": "` + o.ProjectID + `"}}}}`,
		"app cred wrong": `{"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": "` + o.AppCredentialID + `", "secret": "x"}}}}`,
	} {
		if resp, _ := post(body); resp.StatusCode != 401 {
			t.Errorf("%s: %d, want 401", name, resp.StatusCode)
		}
	}
	resp, _ = post(`{"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": "` + o.AppCredentialID + `", "secret": "s3cret"}}}}`)
	if resp.StatusCode != 201 {
		t.Errorf("application credential: %d", resp.StatusCode)
	}
	var v struct{ Version struct{ ID string } }
	if code := h.getJSON("/identity/v3", &v); code != 200 || v.Version.ID != "v3.14" {
		t.Errorf("GET /v3: %d %v", code, v)
	}
	if !strings.Contains(string(h.sim.CloudsYAMLAppCredential("x")), "application_credential_secret: \"s3cret\"") {
		t.Errorf("app credential clouds.yaml: %s", h.sim.CloudsYAMLAppCredential("x"))
	}
	if y := string(h.sim.CloudsYAML("sc")); !strings.Contains(y, "  sc:\n") || !strings.Contains(y, "auth_url: "+h.srv.URL+"/identity/v3\n") {
		t.Errorf("clouds.yaml: %s", y)
	}
}

func TestTokenExpiryAndReauth(t *testing.T) {
	h := newHarness(t, Options{TokenTTL: 10 * time.Minute})
	list := func() int {
		resp, _ := h.compute("GET", "/servers", "", "")
		return resp.StatusCode
	}
	if got := list(); got != 200 {
		t.Fatalf("fresh token: %d", got)
	}
	h.sim.Advance(10 * time.Minute)
	resp, b := h.compute("GET", "/servers", "", "")
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Keystone uri=") {
		t.Errorf("expired token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	jsonEqual(t, b, `{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}`)
	h.token = h.authenticate()
	if got := list(); got != 200 {
		t.Errorf("after re-auth: %d", got)
	}
	h.sim.ExpireTokens()
	if got := list(); got != 401 {
		t.Errorf("after ExpireTokens: %d", got)
	}
	h.token = ""
	if got := list(); got != 401 {
		t.Errorf("no token: %d", got)
	}
	// Version documents need no token, as in OpenStack.
	if resp, _ := h.do("GET", "/compute/v2.1/", "", nil); resp.StatusCode != 200 {
		t.Errorf("version document without token: %d", resp.StatusCode)
	}
}

func TestGlanceProtectedAndPatch(t *testing.T) {
	h := newHarness(t, Options{})
	id := h.sim.PutImage(ImageState{Name: "keep", Properties: map[string]string{"a": "1"}})
	patch := func(ct, body string) (*http.Response, []byte) {
		return h.do("PATCH", "/image/v2/images/"+id, body, map[string]string{"Content-Type": ct})
	}
	const jp = "application/openstack-images-v2.1-json-patch"
	if resp, _ := patch("application/json", `[]`); resp.StatusCode != 415 {
		t.Errorf("plain json patch: %d, want 415", resp.StatusCode)
	}
	resp, b := patch(jp, `[{"op": "replace", "path": "/protected", "value": true}, {"op": "add", "path": "/b", "value": "2"}]`)
	if resp.StatusCode != 200 {
		t.Fatalf("patch: %d %s", resp.StatusCode, b)
	}
	var im map[string]any
	mustJSON(t, b, &im)
	if im["protected"] != true || im["b"] != "2" || im["a"] != "1" {
		t.Errorf("patched image: %v", im)
	}
	resp, b = h.do("DELETE", "/image/v2/images/"+id, "", map[string]string{"Accept": "application/json"})
	if resp.StatusCode != 403 || !strings.Contains(string(b), "is protected and cannot be deleted") {
		t.Errorf("delete protected: %d %s", resp.StatusCode, b)
	}
	if resp, _ := patch(jp, `[{"op": "replace", "path": "/status", "value": "active"}]`); resp.StatusCode != 403 {
		t.Errorf("read-only status: %d", resp.StatusCode)
	}
	if resp, _ := patch(jp, `[{"op": "remove", "path": "/nope"}]`); resp.StatusCode != 409 {
		t.Errorf("remove missing property: %d", resp.StatusCode)
	}
	if resp, _ := patch(jp, `[{"op": "replace", "path": "/protected", "value": false}, {"op": "remove", "path": "/a"}]`); resp.StatusCode != 200 {
		t.Errorf("unprotect: %d", resp.StatusCode)
	}
	if got, _ := h.sim.Image(id); got.Protected || got.Properties["a"] != "" {
		t.Errorf("after unprotect: %+v", got)
	}
	if resp, _ := h.do("DELETE", "/image/v2/images/"+id, "", nil); resp.StatusCode != 204 {
		t.Errorf("delete unprotected: %d", resp.StatusCode)
	}
	// Nova's Location (without /v2) answers Glance's version list, not the image.
	resp, _ = h.do("GET", "/image/images/"+id, "", nil)
	if resp.StatusCode != http.StatusMultipleChoices {
		t.Errorf("GET Location target: %d, want 300", resp.StatusCode)
	}
}

func TestGlancePagination(t *testing.T) {
	h := newHarness(t, Options{MaxLimit: 4})
	for i := range 30 {
		h.sim.PutImage(ImageState{Name: fmt.Sprintf("i%02d", i), Properties: map[string]string{"p": fmt.Sprint(i % 2)}})
		h.sim.Advance(time.Second)
	}
	pages := func(first string) (sizes []int, names []string) {
		next := first
		for next != "" && len(sizes) < 20 {
			var body struct {
				Images []struct{ Name string }
				Next   string
				First  string
				Schema string
			}
			if code := h.getJSON(next, &body); code != 200 {
				t.Fatalf("GET %s: %d", next, code)
			}
			if body.Schema != "/v2/schemas/images" || !strings.HasPrefix(body.First, "/v2/images") {
				t.Errorf("first/schema: %q %q", body.First, body.Schema)
			}
			sizes = append(sizes, len(body.Images))
			for _, im := range body.Images {
				names = append(names, im.Name)
			}
			next = ""
			if body.Next != "" {
				// Glance's next is relative to the endpoint, without its path prefix.
				next = "/image" + body.Next
			}
		}
		return sizes, names
	}
	sizes, names := pages("/image/v2/images?p=1&limit=100")
	if fmt.Sprint(sizes) != "[4 4 4 3]" || len(names) != 15 || names[0] != "i29" || names[14] != "i01" {
		t.Errorf("sizes %v names %v", sizes, names)
	}
	sizes, _ = pages("/image/v2/images?sort_key=name&sort_dir=asc")
	if fmt.Sprint(sizes) != "[4 4 4 4 4 4 4 2]" {
		t.Errorf("all images: %v", sizes)
	}
	h2 := newHarness(t, Options{})
	for i := range 26 {
		h2.sim.PutImage(ImageState{Name: fmt.Sprint(i)})
	}
	var body struct {
		Images []any
		Next   string
	}
	h2.getJSON("/image/v2/images", &body)
	if len(body.Images) != glanceDefaultLimit || body.Next == "" {
		t.Errorf("default page: %d images, next %q", len(body.Images), body.Next)
	}
}

func TestCinderListPagination(t *testing.T) {
	h := newHarness(t, Options{MaxLimit: 2})
	for i := range 5 {
		h.sim.PutSnapshot(SnapshotState{Name: fmt.Sprint(i), Status: []string{"available", "error"}[i%2]})
		h.sim.Advance(time.Second)
	}
	next := "/volume/v3/" + h.sim.Options().ProjectID + "/snapshots/detail"
	var names []string
	for n := 0; next != "" && n < 10; n++ {
		var body struct {
			Snapshots []map[string]any
			Links     []struct{ Rel, Href string } `json:"snapshots_links"`
		}
		if code := h.getJSON(next, &body); code != 200 {
			t.Fatalf("GET %s: %d", next, code)
		}
		for _, s := range body.Snapshots {
			names = append(names, s["name"].(string))
			if s["os-extended-snapshot-attributes:project_id"] != h.sim.Options().ProjectID {
				t.Errorf("detail lacks project_id: %v", s)
			}
		}
		next = ""
		for _, l := range body.Links {
			if l.Rel == "next" {
				next = l.Href
				if !strings.Contains(l.Href, "/snapshots/detail?marker=") {
					t.Errorf("next link %q", l.Href)
				}
			}
		}
	}
	if strings.Join(names, "") != "43210" {
		t.Errorf("names %v", names)
	}
	var body struct{ Snapshots []any }
	h.getJSON("/volume/v3/"+h.sim.Options().ProjectID+"/snapshots?status=error", &body)
	if len(body.Snapshots) != 2 {
		t.Errorf("status filter: %d", len(body.Snapshots))
	}
	resp, b := h.volume("GET", "/snapshots/nope")
	if resp.StatusCode != 404 {
		t.Errorf("unknown snapshot: %d", resp.StatusCode)
	}
	jsonEqual(t, b, `{"itemNotFound": {"code": 404, "message": "Snapshot nope could not be found."}}`)
}

func TestFaults(t *testing.T) {
	h := newHarness(t, Options{})
	srv := h.sim.AddServer(ServerSpec{})
	list := func() *http.Response {
		resp, _ := h.compute("GET", "/servers", "", "2.60")
		return resp
	}
	t.Run("503 for the next request only", func(t *testing.T) {
		h.sim.SetFault(Fault{Op: "compute.servers.list", ErrorStatus: 503, Count: 1})
		if got := list().StatusCode; got != 503 {
			t.Errorf("first: %d", got)
		}
		if got := list().StatusCode; got != 200 {
			t.Errorf("second: %d", got)
		}
	})
	t.Run("429 with Retry-After", func(t *testing.T) {
		id := h.sim.SetFault(Fault{Op: "*", Status429RetryAfter: 1500 * time.Millisecond})
		resp, b := h.do("GET", "/image/v2/images", "", nil)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
			t.Errorf("429: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
		h.sim.ClearFault(id)
		if got := list().StatusCode; got != 200 {
			t.Errorf("after clear: %d", got)
		}
	})
	t.Run("other ops untouched", func(t *testing.T) {
		h.sim.SetFault(Fault{Op: "image.delete", ErrorStatus: 500})
		defer h.sim.ClearFaults()
		if got := list().StatusCode; got != 200 {
			t.Errorf("list with an image.delete fault: %d", got)
		}
	})
	t.Run("error after processing", func(t *testing.T) {
		h.sim.SetFault(Fault{Op: "compute.createImage", ErrorStatus: 500, After: true, Count: 1})
		before := len(h.sim.Images())
		resp, _ := h.compute("POST", "/servers/"+srv+"/action", `{"createImage": {"name": "x"}}`, "2.45")
		if resp.StatusCode != 500 {
			t.Errorf("status %d", resp.StatusCode)
		}
		if got := len(h.sim.Images()); got != before+1 {
			t.Errorf("images %d -> %d: the request should have been processed", before, got)
		}
	})
	t.Run("hang until the client gives up", func(t *testing.T) {
		h.sim.SetFault(Fault{Op: "image.get", Hang: true, Count: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", h.srv.URL+"/image/v2/images/x", nil)
		req.Header.Set("X-Auth-Token", h.token)
		_, err := http.DefaultClient.Do(req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("hang: err = %v, want deadline exceeded", err)
		}
	})
	t.Run("latency", func(t *testing.T) {
		h.sim.SetFault(Fault{Op: "compute.servers.list", Latency: 30 * time.Millisecond, Count: 1})
		start := time.Now()
		if got := list().StatusCode; got != 200 {
			t.Errorf("status %d", got)
		}
		if d := time.Since(start); d < 30*time.Millisecond {
			t.Errorf("latency fault: request took %v", d)
		}
	})
	t.Run("error rate draws from the seed", func(t *testing.T) {
		id := h.sim.SetFault(Fault{Op: "compute.servers.list", ErrorStatus: 500, ErrorRate: 0.5})
		defer h.sim.ClearFault(id)
		fails := 0
		for range 40 {
			if list().StatusCode == 500 {
				fails++
			}
		}
		if fails < 5 || fails > 35 {
			t.Errorf("error rate 0.5 failed %d of 40", fails)
		}
	})
	if got := h.sim.Requests()["compute.servers.list"]; got < 45 {
		t.Errorf("Requests counted %d servers.list", got)
	}
}

func TestControlHTTP(t *testing.T) {
	h := newHarness(t, Options{})
	resp, b := h.do("POST", "/_sim/servers", `{"name": "c1", "tags": ["backup"], "volumes": 1}`, nil)
	if resp.StatusCode != 201 {
		t.Fatalf("add server: %d %s", resp.StatusCode, b)
	}
	var r struct{ ID string }
	mustJSON(t, b, &r)
	if resp, b := h.do("PATCH", "/_sim/servers/"+r.ID, `{"status": "ERROR", "tags": ["x"]}`, nil); resp.StatusCode != 200 {
		t.Fatalf("patch server: %d %s", resp.StatusCode, b)
	}
	sv, _ := h.sim.Server(r.ID)
	if sv.Status != "ERROR" || sv.VMState != "error" || len(sv.Tags) != 1 || sv.Tags[0] != "x" || len(sv.VolumeIDs) != 1 {
		t.Errorf("server after control: %+v", sv)
	}
	if resp, b := h.do("POST", "/_sim/faults", `{"op": "compute.servers.get", "error_status": 503, "latency": "1ms", "count": 1}`, nil); resp.StatusCode != 201 {
		t.Fatalf("fault: %d %s", resp.StatusCode, b)
	}
	if resp, _ := h.compute("GET", "/servers/"+r.ID, "", ""); resp.StatusCode != 503 {
		t.Errorf("fault over HTTP not applied: %d", resp.StatusCode)
	}
	if resp, _ := h.do("POST", "/_sim/faults", `{"op": "x", "latency": "soon"}`, nil); resp.StatusCode != 400 {
		t.Errorf("bad duration: %d", resp.StatusCode)
	}
	if resp, _ := h.do("POST", "/_sim/advance", `{"duration": "2h"}`, nil); resp.StatusCode != 204 {
		t.Errorf("advance: %d", resp.StatusCode)
	}
	if got := h.sim.Now(); !got.Equal(epoch.Add(2 * time.Hour)) {
		t.Errorf("now after advance = %v", got)
	}
	var state struct {
		Servers  []ServerState
		Images   []ImageState
		Requests map[string]int
	}
	if code := h.getJSON("/_sim/state", &state); code != 200 || len(state.Servers) != 1 || state.Requests["compute.servers.get"] != 1 {
		t.Errorf("state: %d %+v", code, state)
	}
	if resp, _ := h.do("DELETE", "/_sim/servers/"+r.ID, "", nil); resp.StatusCode != 204 {
		t.Errorf("remove: %d", resp.StatusCode)
	}
	if _, ok := h.sim.Server(r.ID); ok {
		t.Error("server still there")
	}
	if resp, _ := h.do("POST", "/_sim/servers", `{"nmae": "typo"}`, nil); resp.StatusCode != 400 {
		t.Errorf("unknown field accepted: %d", resp.StatusCode)
	}
}

func TestPythonStyleJSON(t *testing.T) {
	got := string(pyJSON(map[string]any{"a": []any{1, "x,y: z"}, "b": "é<&>"}))
	want := `{"a": [1, "x,y: z"], "b": "\u00e9<&>"}`
	if got != want {
		t.Errorf("pyJSON = %s, want %s", got, want)
	}
	v, err := decodeOrdered([]byte(`{"z": {"b": "it's", "a": [true, null, 1.5]}, "y": "q\"x'"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pyRepr(v), `{'z': {'b': "it's", 'a': [True, None, 1.5]}, 'y': 'q"x\''}`; got != want {
		t.Errorf("pyRepr = %s, want %s", got, want)
	}
	if _, err := decodeOrdered([]byte(`{} {}`)); err == nil {
		t.Error("trailing data accepted")
	}
	var js any
	if err := json.Unmarshal(pyJSON(map[string]string{"k": "\U0001F600"}), &js); err != nil || js.(map[string]any)["k"] != "\U0001F600" {
		t.Errorf("surrogate pair round trip: %v %v", js, err)
	}
}
