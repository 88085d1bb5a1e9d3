package simcloud

import (
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// The tests in this file hold the simulator to answers captured from a real
// OpenStack Zed (reference/nova-responses.md, "Round 2 captures").

func catalogURL(t *testing.T, b []byte, typ string) string {
	t.Helper()
	var tok struct {
		Token struct {
			Catalog []struct {
				Type      string
				Endpoints []struct{ URL string }
			}
		}
	}
	mustJSON(t, b, &tok)
	for _, c := range tok.Token.Catalog {
		if c.Type == typ && len(c.Endpoints) == 1 {
			return c.Endpoints[0].URL
		}
	}
	t.Fatalf("no %s endpoint in %s", typ, b)
	return ""
}

func (h *harness) tokenResponse() []byte {
	h.t.Helper()
	o := h.sim.Options()
	body := `{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "` + o.Username +
		`", "domain": {"name": "` + o.DomainName + `"}, "password": "` + o.Password + `"}}},
		"scope": {"project": {"name": "` + o.ProjectName + `", "domain": {"name": "` + o.DomainName + `"}}}}}`
	resp, b := h.do("POST", "/identity/v3/auth/tokens", body, map[string]string{"X-Auth-Token": ""})
	if resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("auth: %d %s", resp.StatusCode, b)
	}
	return b
}

// TestComputeEndpointForms: Zed's catalog has .../v2.1 without the project id;
// Huawei's documented form has it. Both are offered (option and /_sim/settings),
// both are served, and links repeat the form of the request.
func TestComputeEndpointForms(t *testing.T) {
	h := newHarness(t, Options{})
	pid := h.sim.Options().ProjectID
	if got := catalogURL(t, h.tokenResponse(), "compute"); got != h.srv.URL+"/compute/v2.1" {
		t.Errorf("default compute endpoint %q, want %s/compute/v2.1 (Zed)", got, h.srv.URL)
	}
	if got := catalogURL(t, h.tokenResponse(), "volumev3"); got != h.srv.URL+"/volume/v3/"+pid {
		t.Errorf("volume endpoint %q, want it with the project id", got)
	}

	resp, b := h.do("PATCH", "/_sim/settings", `{"compute_project_id": true}`, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"compute_project_id": true`) {
		t.Fatalf("PATCH /_sim/settings: %d %s", resp.StatusCode, b)
	}
	if got := catalogURL(t, h.tokenResponse(), "compute"); got != h.srv.URL+"/compute/v2.1/"+pid {
		t.Errorf("compute endpoint after the setting %q, want it with the project id", got)
	}
	var st map[string]bool
	if code := h.getJSON("/_sim/settings", &st); code != 200 || !st["compute_project_id"] {
		t.Errorf("GET /_sim/settings: %d %v", code, st)
	}

	h2 := newHarness(t, Options{ComputeProjectID: true})
	if got := catalogURL(t, h2.tokenResponse(), "compute"); got != h2.srv.URL+"/compute/v2.1/"+h2.sim.Options().ProjectID {
		t.Errorf("Options.ComputeProjectID: compute endpoint %q", got)
	}

	id := h.sim.AddServer(ServerSpec{Name: "web"})
	for _, prefix := range []string{"/compute/v2.1", "/compute/v2.1/" + pid} {
		resp, b := h.do("GET", h.srv.URL+prefix+"/servers/"+id, "", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s/servers/%s: %d", prefix, id, resp.StatusCode)
		}
		var body struct {
			Server struct{ Links []struct{ Rel, Href string } }
		}
		mustJSON(t, b, &body)
		if len(body.Server.Links) == 0 || body.Server.Links[0].Href != h.srv.URL+prefix+"/servers/"+id {
			t.Errorf("self link via %s: %v", prefix, body.Server.Links)
		}
	}
}

// TestNextLinksEncodeLikePython: Nova re-encodes the query with urlencode, so the
// comma and "=" of tags-any come back as %2C and %3D; Glance's links too.
func TestNextLinksEncodeLikePython(t *testing.T) {
	h := newHarness(t, Options{})
	for range 3 {
		h.sim.AddServer(ServerSpec{Tags: []string{"fid"}})
		h.sim.Advance(time.Second)
	}
	resp, b := h.do("GET", "/compute/v2.1/servers/detail?limit=2&tags-any=fid,backup=daily", "",
		map[string]string{"X-OpenStack-Nova-API-Version": "2.26"})
	if resp.StatusCode != 200 {
		t.Fatalf("list: %d %s", resp.StatusCode, b)
	}
	var body struct {
		Servers []struct{ ID string }
		Links   []struct{ Rel, Href string } `json:"servers_links"`
	}
	mustJSON(t, b, &body)
	if len(body.Servers) != 2 || len(body.Links) != 1 {
		t.Fatalf("page: %s", b)
	}
	want := h.srv.URL + "/compute/v2.1/servers/detail?limit=2&tags-any=fid%2Cbackup%3Ddaily&marker=" + body.Servers[1].ID
	if body.Links[0].Href != want {
		t.Errorf("next link\n got %s\nwant %s", body.Links[0].Href, want)
	}
	// The encoded link still works.
	resp, b = h.do("GET", body.Links[0].Href, "", map[string]string{"X-OpenStack-Nova-API-Version": "2.26"})
	mustJSON(t, b, &body)
	if resp.StatusCode != 200 || len(body.Servers) != 1 {
		t.Errorf("following the next link: %d %s", resp.StatusCode, b)
	}

	for range 2 {
		h.sim.PutImage(ImageState{Name: "x", Properties: map[string]string{"created_by": "a,b:c"}})
		h.sim.Advance(time.Second)
	}
	var imgs struct {
		Images      []struct{ ID string }
		First, Next string
	}
	h.getJSON("/image/v2/images?limit=1", &imgs)
	if imgs.First != "/v2/images?limit=1" || len(imgs.Images) != 1 || imgs.Next != "/v2/images?limit=1&marker="+imgs.Images[0].ID {
		t.Errorf("Glance links: first %q next %q", imgs.First, imgs.Next)
	}
	imgs.Next = ""
	h.getJSON("/image/v2/images?limit=1&created_by=a,b:c&limit=1", &imgs)
	if len(imgs.Images) != 1 || !strings.HasPrefix(imgs.Next, "/v2/images?limit=1&created_by=a%2Cb%3Ac&marker=") {
		t.Errorf("Glance next with a comma: %q", imgs.Next)
	}
}

// TestAdminServerView: the simulated user is an admin, so Nova adds the
// OS-EXT-SRV-ATTR fields (more from 2.3) and host_status (from 2.16); a server
// without networks has no security_groups key.
func TestAdminServerView(t *testing.T) {
	h := newHarness(t, Options{})
	id := h.sim.AddServer(ServerSpec{Name: "Web_1 a", RootDevice: "/dev/sda", Volumes: 1})
	get := func(mv string) map[string]any {
		resp, b := h.compute("GET", "/servers/"+id, "", mv)
		if resp.StatusCode != 200 {
			t.Fatalf("GET at %s: %d", mv, resp.StatusCode)
		}
		var body struct{ Server map[string]any }
		mustJSON(t, b, &body)
		return body.Server
	}
	s := get("2.93")
	for _, k := range []string{"host", "hostname", "hypervisor_hostname", "instance_name", "kernel_id",
		"launch_index", "ramdisk_id", "reservation_id", "root_device_name", "user_data"} {
		if _, ok := s["OS-EXT-SRV-ATTR:"+k]; !ok {
			t.Errorf("2.93 view lacks OS-EXT-SRV-ATTR:%s", k)
		}
	}
	if s["host_status"] != "UP" || s["OS-EXT-SRV-ATTR:root_device_name"] != "/dev/sda" || s["OS-EXT-SRV-ATTR:hostname"] != "web-1-a" {
		t.Errorf("host_status %v, root_device_name %v, hostname %v", s["host_status"],
			s["OS-EXT-SRV-ATTR:root_device_name"], s["OS-EXT-SRV-ATTR:hostname"])
	}
	if _, ok := s["security_groups"]; ok {
		t.Error("a server without networks shows security_groups")
	}
	old := get("2.1")
	if _, ok := old["OS-EXT-SRV-ATTR:host"]; !ok {
		t.Error("2.1 view lacks OS-EXT-SRV-ATTR:host")
	}
	for _, k := range []string{"OS-EXT-SRV-ATTR:hostname", "OS-EXT-SRV-ATTR:root_device_name", "host_status"} {
		if _, ok := old[k]; ok {
			t.Errorf("2.1 view has %s (added in a later microversion)", k)
		}
	}
}

// TestSnapshotImageKeys: an image-backed snapshot has exactly the keys of the
// captured Zed image (plus our metadata); a volume-backed one names the server's
// root device, which follows the bus.
func TestSnapshotImageKeys(t *testing.T) {
	h := newHarness(t, Options{})
	srv := h.sim.AddServer(ServerSpec{Name: "web"})
	id := h.createImage(srv, "web-1", map[string]string{"created_by": "probe"})
	h.sim.Advance(time.Hour)
	h.token = h.authenticate()
	var im map[string]any
	h.getJSON("/image/v2/images/"+id, &im)
	var keys []string
	for k := range im {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := strings.Fields(`base_image_ref boot_roles checksum container_format created_at created_by disk_format
		file id image_location image_state image_type instance_uuid min_disk min_ram name os_hash_algo os_hash_value
		os_hidden owner owner_id owner_project_name owner_specified.openstack.md5 owner_specified.openstack.object
		owner_specified.openstack.sha256 owner_user_name protected schema self size status stores tags updated_at
		user_id virtual_size visibility`)
	if !slices.Equal(keys, want) {
		t.Errorf("image keys\n got %v\nwant %v", keys, want)
	}
	if im["image_location"] != "snapshot" || im["image_state"] != "available" || im["owner_id"] != h.sim.Options().ProjectID {
		t.Errorf("image_location %v image_state %v owner_id %v", im["image_location"], im["image_state"], im["owner_id"])
	}

	vol := h.sim.AddServer(ServerSpec{Name: "db", Volumes: 2, RootDevice: "/dev/sda"})
	vid := h.createImage(vol, "db-1", nil)
	var vim map[string]any
	h.getJSON("/image/v2/images/"+vid, &vim)
	if vim["root_device_name"] != "/dev/sda" {
		t.Errorf("volume-backed root_device_name %v, want /dev/sda (the server's)", vim["root_device_name"])
	}
	var bdm []map[string]any
	mustJSON(t, []byte(vim["block_device_mapping"].(string)), &bdm)
	if len(bdm) != 2 || bdm[0]["device_name"] != "/dev/sda" || bdm[1]["device_name"] != "/dev/sdb" {
		t.Errorf("block_device_mapping devices: %v", bdm)
	}
	for _, k := range []string{"stores", "instance_uuid", "image_location"} {
		if _, ok := vim[k]; ok {
			t.Errorf("volume-backed image has %s", k)
		}
	}
	def := h.createImage(h.sim.AddServer(ServerSpec{Volumes: 1}), "d", nil)
	var dim map[string]any
	h.getJSON("/image/v2/images/"+def, &dim)
	if dim["root_device_name"] != "/dev/vda" {
		t.Errorf("default root_device_name %v, want /dev/vda", dim["root_device_name"])
	}
}

// TestGlanceAndCinderContentTypes: webob answers HTML to curl (Accept */* or
// none), JSON to a client asking for it; an empty Glance 204 and Cinder 202 are
// text/html.
func TestGlanceAndCinderContentTypes(t *testing.T) {
	h := newHarness(t, Options{})
	id := h.sim.PutImage(ImageState{Name: "keep", Protected: true})
	for _, accept := range []string{"", "*/*"} {
		resp, b := h.do("DELETE", "/image/v2/images/"+id, "", map[string]string{"Accept": accept})
		if resp.StatusCode != 403 || resp.Header.Get("Content-Type") != "text/html; charset=UTF-8" {
			t.Errorf("Accept %q: protected delete %d %q", accept, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		want := "<html>\n <head>\n  <title>403 Forbidden</title>\n </head>\n <body>\n  <h1>403 Forbidden</h1>\n  Image " + id +
			" is protected and cannot be deleted.<br /><br />\n\n\n\n </body>\n</html>"
		if string(b) != want {
			t.Errorf("Accept %q: body\n%s\nwant\n%s", accept, b, want)
		}
	}
	resp, b := h.do("DELETE", "/image/v2/images/"+id, "", map[string]string{"Accept": "application/json"})
	if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("JSON client: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if resp, _ := h.do("DELETE", "/image/v2/images/"+id, "", map[string]string{"Accept": "text/plain"}); resp.Header.Get("Content-Type") != "text/plain; charset=UTF-8" {
		t.Errorf("text/plain client: %q", resp.Header.Get("Content-Type"))
	}

	h.sim.SetImageProtected(id, false)
	resp, b = h.do("DELETE", "/image/v2/images/"+id, "", map[string]string{"Accept": "*/*"})
	if resp.StatusCode != 204 || resp.Header.Get("Content-Type") != "text/html; charset=UTF-8" || len(b) != 0 {
		t.Errorf("delete: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	resp, b = h.do("GET", "/image/v2/images/"+id, "", map[string]string{"Accept": "*/*"})
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "text/html; charset=UTF-8" ||
		!strings.Contains(string(b), "No image found with ID "+id) || !strings.Contains(string(b), "<h1>404 Not Found</h1>") {
		t.Errorf("GET deleted: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}

	sn := h.sim.PutSnapshot(SnapshotState{})
	resp, b = h.volume("DELETE", "/snapshots/"+sn)
	if resp.StatusCode != 202 || resp.Header.Get("Content-Type") != "text/html; charset=UTF-8" || len(b) != 0 ||
		resp.Header.Get("Openstack-Api-Version") != "volume 3.0" {
		t.Errorf("Cinder delete: %d %v %q", resp.StatusCode, resp.Header, b)
	}
	resp, b = h.volume("DELETE", "/snapshots/"+"00000000-0000-4000-8000-000000000000")
	if resp.StatusCode != 404 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("Cinder delete unknown: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	jsonEqual(t, b, `{"itemNotFound": {"code": 404, "message": "Snapshot 00000000-0000-4000-8000-000000000000 could not be found."}}`)
}

func TestAcceptOffer(t *testing.T) {
	for header, want := range map[string]string{
		"":                                    "text/html",
		"*/*":                                 "text/html",
		"application/json":                    "application/json",
		"application/json, */*":               "text/html",
		"application/json, */*;q=0.5":         "application/json",
		"text/*;q=0.2, application/json":      "application/json",
		"text/plain":                          "",
		"text/html;q=0, application/json;q=0": "",
	} {
		if got := acceptOffer(header, "text/html", "application/json"); got != want {
			t.Errorf("acceptOffer(%q) = %q, want %q", header, got, want)
		}
	}
}

// TestImageQueuedTimeCapped: a short test build still passes through saving (the
// queue is capped at a third of the build), and the default build saves from
// about 0.7 s as on the captured cloud.
func TestImageQueuedTimeCapped(t *testing.T) {
	h := newHarness(t, Options{ImageBuildTime: 60 * time.Millisecond})
	id := h.createImage(h.sim.AddServer(ServerSpec{}), "x", nil)
	for _, step := range []struct {
		d    time.Duration
		want string
	}{{19 * time.Millisecond, "queued"}, {time.Millisecond, "saving"}, {40 * time.Millisecond, "active"}} {
		h.sim.Advance(step.d)
		if st, _ := h.imageStatus(id); st != step.want {
			t.Errorf("after +%v: %s, want %s", step.d, st, step.want)
		}
	}
	d := newHarness(t, Options{})
	id = d.createImage(d.sim.AddServer(ServerSpec{}), "x", nil)
	for _, step := range []struct {
		d    time.Duration
		want string
	}{{600 * time.Millisecond, "queued"}, {100 * time.Millisecond, "saving"}, {1300 * time.Millisecond, "active"}} {
		d.sim.Advance(step.d)
		if st, _ := d.imageStatus(id); st != step.want {
			t.Errorf("default build, after +%v: %s, want %s", step.d, st, step.want)
		}
	}
}

// TestUnscopedToken: a password request without a scope gets what Keystone
// gives a user without a default project: a token with no project, no roles and
// no catalog, which the other services refuse.
func TestUnscopedToken(t *testing.T) {
	h := newHarness(t, Options{})
	o := h.sim.Options()
	resp, b := h.do("POST", "/identity/v3/auth/tokens", `{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "`+
		o.Username+`", "domain": {"name": "Default"}, "password": "`+o.Password+`"}}}}}`, map[string]string{"X-Auth-Token": ""})
	if resp.StatusCode != 201 {
		t.Fatalf("unscoped auth: %d %s", resp.StatusCode, b)
	}
	var body struct{ Token map[string]json.RawMessage }
	mustJSON(t, b, &body)
	for _, k := range []string{"catalog", "project", "roles", "is_domain"} {
		if _, ok := body.Token[k]; ok {
			t.Errorf("unscoped token has %s", k)
		}
	}
	for _, k := range []string{"methods", "user", "expires_at", "issued_at", "audit_ids"} {
		if _, ok := body.Token[k]; !ok {
			t.Errorf("unscoped token lacks %s", k)
		}
	}
	tok := resp.Header.Get("X-Subject-Token")
	if resp, _ := h.do("GET", "/compute/v2.1/servers", "", map[string]string{"X-Auth-Token": tok}); resp.StatusCode != 401 {
		t.Errorf("Nova with an unscoped token: %d, want 401", resp.StatusCode)
	}
	if resp, _ := h.do("GET", "/identity/v3/auth/tokens", "", map[string]string{"X-Auth-Token": tok, "X-Subject-Token": tok}); resp.StatusCode != 200 {
		t.Errorf("Keystone validating an unscoped token: %d, want 200", resp.StatusCode)
	}
}
