package simcloud

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// tagFleet is the fleet of nova-responses.md's tag filter table.
func tagFleet(h *harness) map[string]string {
	names := map[string]string{}
	for _, sp := range []ServerSpec{
		{Name: "s1", Tags: []string{"backup", "daily"}},
		{Name: "s2", Tags: []string{"backup", "weekly"}},
		{Name: "s3", Tags: []string{"other"}},
		{Name: "v", Tags: []string{"backup", "bfv"}, Volumes: 1},
	} {
		names[h.sim.AddServer(sp)] = sp.Name
	}
	return names
}

func (h *harness) listNames(query, mv string) []string {
	h.t.Helper()
	resp, b := h.compute("GET", "/servers/detail"+query, "", mv)
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("list %s: %d %s", query, resp.StatusCode, b)
	}
	var body struct {
		Servers []map[string]any `json:"servers"`
	}
	mustJSON(h.t, b, &body)
	var names []string
	for _, s := range body.Servers {
		names = append(names, s["name"].(string))
	}
	slices.Sort(names)
	return names
}

func TestTagFiltersMatchNovaTable(t *testing.T) {
	h := newHarness(t, Options{Seed: 1})
	tagFleet(h)
	table := []struct {
		query string
		want  []string
	}{
		{"?tags=backup,daily", []string{"s1"}},
		{"?tags=backup", []string{"s1", "s2", "v"}},
		{"?tags-any=daily,weekly", []string{"s1", "s2"}},
		{"?tags-any=other,bfv", []string{"s3", "v"}},
		{"?not-tags=backup", []string{"s3"}},
		{"?not-tags-any=daily,bfv", []string{"s2", "s3"}},
		{"?tags=backup&tags-any=weekly,bfv", []string{"s2", "v"}},
		// not-tags excludes only servers having all the tags.
		{"?not-tags=backup,daily", []string{"s2", "s3", "v"}},
	}
	for _, mv := range []string{"2.26", "2.52"} {
		for _, row := range table {
			t.Run(mv+row.query, func(t *testing.T) {
				if got := h.listNames(row.query, mv); !slices.Equal(got, row.want) {
					t.Errorf("got %v, want %v", got, row.want)
				}
			})
		}
	}
	t.Run("ignored below 2.26", func(t *testing.T) {
		for _, mv := range []string{"", "2.1", "2.25"} {
			if got := h.listNames("?tags=backup", mv); len(got) != 4 {
				t.Errorf("at %q got %v, want all four", mv, got)
			}
		}
	})
}

func TestTagsFieldOnlyFrom226(t *testing.T) {
	h := newHarness(t, Options{})
	id := h.sim.AddServer(ServerSpec{Name: "a", Tags: []string{"backup", "daily"}})
	for _, tc := range []struct {
		mv   string
		want bool
	}{{"2.25", false}, {"2.26", true}} {
		_, b := h.compute("GET", "/servers/"+id, "", tc.mv)
		var body struct{ Server map[string]any }
		mustJSON(t, b, &body)
		if _, ok := body.Server["tags"]; ok != tc.want {
			t.Errorf("at %s tags present = %v, want %v", tc.mv, ok, tc.want)
		}
	}
	resp, b := h.compute("GET", "/servers/"+id+"/tags", "", "2.26")
	if resp.StatusCode != 200 {
		t.Fatalf("tags: %d", resp.StatusCode)
	}
	jsonEqual(t, b, `{"tags": ["backup", "daily"]}`)
	if resp, _ := h.compute("GET", "/servers/"+id+"/tags", "", "2.25"); resp.StatusCode != 404 {
		t.Errorf("tags at 2.25: %d, want 404", resp.StatusCode)
	}
}

func TestServerViewFields(t *testing.T) {
	h := newHarness(t, Options{})
	img := h.sim.AddServer(ServerSpec{Name: "img", AZ: "az-2", Status: "SHUTOFF"})
	vol := h.sim.AddServer(ServerSpec{Name: "vol", Volumes: 2, TaskState: "rebooting"})
	get := func(id string) map[string]any {
		_, b := h.compute("GET", "/servers/"+id, "", "2.60")
		var body struct{ Server map[string]any }
		mustJSON(t, b, &body)
		return body.Server
	}
	s := get(img)
	if s["OS-EXT-AZ:availability_zone"] != "az-2" || s["OS-EXT-STS:vm_state"] != "stopped" ||
		s["OS-EXT-STS:task_state"] != nil || s["status"] != "SHUTOFF" {
		t.Errorf("image-backed server view: %v", s)
	}
	if im, ok := s["image"].(map[string]any); !ok || im["id"] == "" {
		t.Errorf("image-backed server image = %v", s["image"])
	}
	v := get(vol)
	if v["image"] != "" {
		t.Errorf(`volume-backed image = %v, want ""`, v["image"])
	}
	if v["OS-EXT-STS:task_state"] != "rebooting" {
		t.Errorf("task_state = %v", v["OS-EXT-STS:task_state"])
	}
	if vols, _ := v["os-extended-volumes:volumes_attached"].([]any); len(vols) != 2 {
		t.Errorf("volumes_attached = %v", v["os-extended-volumes:volumes_attached"])
	}
	resp, b := h.compute("GET", "/servers/nope", "", "2.60")
	if resp.StatusCode != 404 {
		t.Fatalf("unknown server: %d", resp.StatusCode)
	}
	jsonEqual(t, b, `{"itemNotFound": {"code": 404, "message": "Instance nope could not be found."}}`)
}

func TestServersPagination(t *testing.T) {
	h := newHarness(t, Options{MaxLimit: 3})
	var ids []string
	for i := range 7 {
		ids = append(ids, h.sim.AddServer(ServerSpec{Name: fmt.Sprintf("s%d", i), Tags: []string{"backup"}}))
		h.sim.Advance(time.Second) // distinct created_at: newest first
	}
	h.sim.AddServer(ServerSpec{Name: "untagged"})
	follow := func(first string, mv string) (pages [][]string) {
		next := first
		for next != "" && len(pages) < 10 {
			resp, b := h.do("GET", next, "", map[string]string{"X-OpenStack-Nova-API-Version": mv})
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s: %d %s", next, resp.StatusCode, b)
			}
			var body struct {
				Servers []struct{ Name string }
				Links   []struct{ Rel, Href string } `json:"servers_links"`
			}
			mustJSON(t, b, &body)
			var names []string
			for _, s := range body.Servers {
				names = append(names, s.Name)
			}
			pages = append(pages, names)
			next = ""
			for _, l := range body.Links {
				if l.Rel == "next" {
					next = l.Href
				}
			}
		}
		return pages
	}
	base := "/compute/v2.1/" + h.sim.Options().ProjectID + "/servers/detail"
	got := follow(base+"?tags=backup", "2.26")
	want := [][]string{{"s6", "s5", "s4"}, {"s3", "s2", "s1"}, {"s0"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pages = %v, want %v", got, want)
	}
	// A page that is exactly full gets a next link that yields an empty page, as in Nova.
	got = follow(base+"?limit=2&tags=backup&not-tags-any=x", "2.26")
	if len(got) != 4 || len(got[3]) != 1 {
		t.Errorf("limit=2 pages = %v", got)
	}
	if resp, _ := h.compute("GET", "/servers/detail?marker=nope", "", "2.26"); resp.StatusCode != 400 {
		t.Errorf("unknown marker: %d, want 400", resp.StatusCode)
	}
	_, b := h.compute("GET", "/servers?limit=1", "", "2.26")
	if !strings.Contains(string(b), `"servers_links": [{"`) || !strings.Contains(string(b), "/servers?limit=1&marker=") {
		t.Errorf("simple list next link: %s", b)
	}
}

func TestMicroversionNegotiation(t *testing.T) {
	h := newHarness(t, Options{})
	h.sim.AddServer(ServerSpec{})
	for _, tc := range []struct {
		name    string
		headers map[string]string
		code    int
		echo    string
	}{
		{"none", nil, 200, "2.1"},
		{"nova header", map[string]string{"X-OpenStack-Nova-API-Version": "2.30"}, 200, "2.30"},
		{"generic header", map[string]string{"OpenStack-API-Version": "compute 2.45"}, 200, "2.45"},
		{"generic wins", map[string]string{"OpenStack-API-Version": "compute 2.50", "X-OpenStack-Nova-API-Version": "2.3"}, 200, "2.50"},
		{"latest", map[string]string{"X-OpenStack-Nova-API-Version": "latest"}, 200, "2.93"},
		{"zed max", map[string]string{"X-OpenStack-Nova-API-Version": "2.93"}, 200, "2.93"},
		{"too new", map[string]string{"X-OpenStack-Nova-API-Version": "2.94"}, 406, ""},
		{"too old", map[string]string{"X-OpenStack-Nova-API-Version": "2.0"}, 406, ""},
		{"garbage", map[string]string{"X-OpenStack-Nova-API-Version": "two"}, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := h.do("GET", "/compute/v2.1/servers", "", tc.headers)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.code, b)
			}
			if tc.echo == "" {
				return
			}
			if got := resp.Header.Get("X-Openstack-Nova-Api-Version"); got != tc.echo {
				t.Errorf("X-Openstack-Nova-Api-Version = %q, want %q", got, tc.echo)
			}
			if got := resp.Header.Get("Openstack-Api-Version"); got != "compute "+tc.echo {
				t.Errorf("Openstack-Api-Version = %q", got)
			}
			if got := resp.Header.Values("Vary"); !slices.Equal(got, []string{"OpenStack-API-Version", "X-OpenStack-Nova-API-Version"}) {
				t.Errorf("Vary = %v", got)
			}
		})
	}
	_, b := h.do("GET", "/compute/v2.1/servers", "", map[string]string{"X-OpenStack-Nova-API-Version": "2.94"})
	jsonEqual(t, b, `{"computeFault": {"code": 406, "message": "Version 2.94 is not supported by the API. Minimum is 2.1 and maximum is 2.93."}}`)

	// Zed: GET /v2.1/ answers 200 with the version headers (2.1 when none was
	// asked for) and version 2.93.
	for _, path := range []string{"/compute/v2.1/", "/compute/v2.1/" + h.sim.Options().ProjectID + "/"} {
		resp, b := h.do("GET", path, "", nil)
		var doc struct{ Version map[string]any }
		mustJSON(t, b, &doc)
		if resp.StatusCode != 200 || doc.Version["version"] != "2.93" || doc.Version["min_version"] != "2.1" {
			t.Errorf("%s: %d %v", path, resp.StatusCode, doc.Version)
		}
		if got, got2 := resp.Header.Get("Openstack-Api-Version"), resp.Header.Get("X-Openstack-Nova-Api-Version"); got != "compute 2.1" || got2 != "2.1" {
			t.Errorf("%s headers: Openstack-Api-Version %q, X-Openstack-Nova-Api-Version %q; want compute 2.1 and 2.1", path, got, got2)
		}
	}
	var root struct{ Versions []map[string]any }
	if code := h.getJSON("/compute/", &root); code != 200 || len(root.Versions) != 2 || root.Versions[1]["version"] != "2.93" {
		t.Errorf("root versions: %d %v", code, root.Versions)
	}
	h2 := newHarness(t, Options{ComputeVersion: "2.44"})
	resp, _ := h2.do("GET", "/compute/v2.1/servers", "", map[string]string{"X-OpenStack-Nova-API-Version": "latest"})
	if got := resp.Header.Get("X-Openstack-Nova-Api-Version"); got != "2.44" {
		t.Errorf("configured max: latest = %q, want 2.44", got)
	}
}

func TestCreateImageResponsesByMicroversion(t *testing.T) {
	h := newHarness(t, Options{Seed: 3})
	a := h.sim.AddServer(ServerSpec{Name: "a"})
	b := h.sim.AddServer(ServerSpec{Name: "b"})
	body := `{"createImage": {"name": "img-v21", "metadata": {"created_by": "probe"}}}`

	resp, out := h.compute("POST", "/servers/"+a+"/action", body, "2.1")
	if resp.StatusCode != 202 || len(out) != 0 {
		t.Fatalf("2.1: %d %q", resp.StatusCode, out)
	}
	loc := resp.Header.Get("Location")
	prefix := h.srv.URL + "/image/images/"
	if !strings.HasPrefix(loc, prefix) || len(loc) != len(prefix)+36 {
		t.Errorf("Location = %q", loc)
	}
	for k, v := range map[string]string{"Content-Type": "text/html; charset=UTF-8", "Content-Length": "0",
		"Openstack-Api-Version": "compute 2.1", "X-Openstack-Nova-Api-Version": "2.1"} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("2.1 %s = %q, want %q", k, got, v)
		}
	}
	if _, ok := h.sim.Image(strings.TrimPrefix(loc, prefix)); !ok {
		t.Errorf("Location names no image")
	}
	if _, code := h.imageStatus(strings.TrimPrefix(loc, prefix)); code != 200 {
		t.Errorf("image of Location: %d", code)
	}

	resp, out = h.compute("POST", "/servers/"+b+"/action", body, "2.45")
	if resp.StatusCode != 202 || resp.Header.Get("Location") != "" {
		t.Fatalf("2.45: %d Location=%q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("2.45 Content-Type = %q", ct)
	}
	var r struct {
		ImageID string `json:"image_id"`
	}
	mustJSON(t, out, &r)
	jsonEqual(t, out, `{"image_id": "`+r.ImageID+`"}`)
	if len(out) != 52 || resp.Header.Get("Content-Length") != "52" {
		t.Errorf("2.45 body length %d, header %q", len(out), resp.Header.Get("Content-Length"))
	}
}

func TestCreateImageErrors(t *testing.T) {
	h := newHarness(t, Options{})
	errSrv := h.sim.AddServer(ServerSpec{Status: "ERROR"})
	busy := h.sim.AddServer(ServerSpec{})
	off := h.sim.AddServer(ServerSpec{Status: "SHUTOFF"})
	shelved := h.sim.AddServer(ServerSpec{Status: "SHELVED_OFFLOADED"})
	ci := func(id, body string) (int, string, string) {
		resp, b := h.compute("POST", "/servers/"+id+"/action", body, "2.45")
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	ok := `{"createImage": {"name": "x"}}`

	code, ct, b := ci(errSrv, ok)
	if code != 409 || ct != "application/json; charset=UTF-8" {
		t.Errorf("ERROR server: %d %q", code, ct)
	}
	jsonEqual(t, []byte(b), `{"conflictingRequest": {"code": 409, "message": "Cannot 'createImage' instance `+errSrv+` while it is in vm_state error"}}`)

	if code, _, _ := ci(busy, ok); code != 202 {
		t.Fatalf("first createImage: %d", code)
	}
	code, _, b = ci(busy, ok)
	if code != 409 {
		t.Errorf("busy: %d", code)
	}
	jsonEqual(t, []byte(b), `{"conflictingRequest": {"code": 409, "message": "Cannot 'createImage' instance `+busy+` while it is in task_state image_snapshot_pending"}}`)

	if code, _, b := ci(off, ok); code != 202 {
		t.Errorf("SHUTOFF server: %d %s", code, b)
	}
	if code, _, _ := ci(shelved, ok); code != 409 {
		t.Errorf("SHELVED_OFFLOADED server: %d, want 409", code)
	}
	code, _, b = ci("6e0e2a6b-0000-4000-8000-000000000000", ok)
	if code != 404 {
		t.Errorf("unknown: %d", code)
	}
	jsonEqual(t, []byte(b), `{"itemNotFound": {"code": 404, "message": "Instance 6e0e2a6b-0000-4000-8000-000000000000 could not be found."}}`)

	long := strings.Repeat("n", 256)
	for _, tc := range []struct{ name, body, msg string }{
		{"missing name", `{"createImage": {"metadata": {"a": "b"}}}`,
			`Invalid input for field/attribute createImage. Value: {'metadata': {'a': 'b'}}. 'name' is a required property`},
		{"empty name", `{"createImage": {"name": ""}}`, `Invalid input for field/attribute name. Value: . '' is too short`},
		{"long name", `{"createImage": {"name": "` + long + `"}}`,
			`Invalid input for field/attribute name. Value: ` + long + `. '` + long + `' is too long`},
		{"leading space", `{"createImage": {"name": " x"}}`,
			`An invalid 'name' value was provided. The name must be: printable characters. Can not start or end with whitespace.`},
		{"name not string", `{"createImage": {"name": 5}}`, `Invalid input for field/attribute name. Value: 5. 5 is not of type 'string'`},
		{"slash key", `{"createImage": {"name": "x", "metadata": {"imagekeeper/policy": "p", "ok": "1"}}}`,
			`Invalid input for field/attribute metadata. Value: {'imagekeeper/policy': 'p', 'ok': '1'}. 'imagekeeper/policy' does not match any of the regexes: '^[a-zA-Z0-9-_:. ]{1,255}$'`},
		{"long value", `{"createImage": {"name": "x", "metadata": {"k": "` + long + `"}}}`,
			`Invalid input for field/attribute k. Value: ` + long + `. '` + long + `' is too long`},
		{"extra key", `{"createImage": {"name": "x", "foo": 1}}`,
			`Invalid input for field/attribute createImage. Value: {'name': 'x', 'foo': 1}. Additional properties are not allowed ('foo' was unexpected)`},
		{"two slash keys", `{"createImage": {"name": "x", "metadata": {"z/1": "p", "a/2": "q"}}}`,
			`Invalid input for field/attribute metadata. Value: {'z/1': 'p', 'a/2': 'q'}. 'a/2', 'z/1' do not match any of the regexes: '^[a-zA-Z0-9-_:. ]{1,255}$'`},
		{"two extra keys", `{"createImage": {"name": "x", "foo": 1, "bar": 2}}`,
			`Invalid input for field/attribute createImage. Value: {'name': 'x', 'foo': 1, 'bar': 2}. Additional properties are not allowed ('foo', 'bar' were unexpected)`},
		{"malformed", `{"createImage": `, `Malformed request body`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := h.sim.AddServer(ServerSpec{})
			code, _, b := ci(srv, tc.body)
			if code != 400 {
				t.Fatalf("status %d: %s", code, b)
			}
			want, _ := json.Marshal(tc.msg)
			jsonEqual(t, []byte(b), `{"badRequest": {"code": 400, "message": `+string(want)+`}}`)
			if n := len(h.sim.Images()); n != 2 {
				t.Errorf("a refused request made an image: %d images", n)
			}
		})
	}
	if got := h.sim.CreateImageCalls(busy); got != 2 {
		t.Errorf("CreateImageCalls(busy) = %d, want 2", got)
	}
}

func TestImageBackedLifecycle(t *testing.T) {
	h := newHarness(t, Options{ImageBuildTime: 8 * time.Second})
	srv := h.sim.AddServer(ServerSpec{Name: "web", ImageProperties: map[string]string{
		"imagekeeper_owner": "inherited", "os_distro": "debian", "img_signature": "sig"}})
	id := h.createImage(srv, "web-1", map[string]string{"imagekeeper_policy": "daily", "os_distro": "mine"})

	steps := []struct {
		at          time.Duration
		image, task any
	}{
		// Zed: queued, saving from about 0.7 s whatever the build time, then active.
		{0, "queued", "image_snapshot_pending"},
		{300 * time.Millisecond, "queued", "image_snapshot_pending"},
		{400 * time.Millisecond, "queued", "image_snapshot"},
		{699 * time.Millisecond, "queued", "image_snapshot"},
		{700 * time.Millisecond, "saving", "image_uploading"},
		{7 * time.Second, "saving", "image_uploading"},
		{8 * time.Second, "active", nil},
	}
	var elapsed time.Duration
	for _, st := range steps {
		h.sim.Advance(st.at - elapsed)
		elapsed = st.at
		if got, _ := h.imageStatus(id); got != st.image {
			t.Errorf("at %v image %v, want %v", st.at, got, st.image)
		}
		if got := h.taskState(srv); got != st.task {
			t.Errorf("at %v task %v, want %v", st.at, got, st.task)
		}
	}
	var im map[string]any
	h.getJSON("/image/v2/images/"+id, &im)
	for k, want := range map[string]any{
		"imagekeeper_policy": "daily", "os_distro": "mine", "imagekeeper_owner": "inherited",
		"image_type": "snapshot", "instance_uuid": srv, "size": float64(21430272), "name": "web-1",
	} {
		if im[k] != want {
			t.Errorf("image %s = %v, want %v", k, im[k], want)
		}
	}
	if _, ok := im["img_signature"]; ok {
		t.Error("non-inheritable img_signature was inherited")
	}
	if _, ok := im["block_device_mapping"]; ok {
		t.Error("image-backed image has block_device_mapping")
	}
	// Glance filters on any property as an exact match.
	for q, want := range map[string]int{
		"?instance_uuid=" + srv: 1, "?imagekeeper_policy=daily": 1, "?imagekeeper_policy=weekly": 0,
		"?image_type=snapshot&status=active": 1, "?image_type=snapshot&status=queued": 0, "?status=in:saving,active": 1,
	} {
		var body struct{ Images []map[string]any }
		h.getJSON("/image/v2/images"+q, &body)
		if len(body.Images) != want {
			t.Errorf("GET /v2/images%s: %d images, want %d", q, len(body.Images), want)
		}
	}
}

func TestVolumeBackedImage(t *testing.T) {
	h := newHarness(t, Options{SnapshotBuildTime: 4 * time.Second, SnapshotDeleteTime: 2 * time.Second})
	srv := h.sim.AddServer(ServerSpec{Name: "db", Volumes: 2})
	id := h.createImage(srv, "db-1", map[string]string{"k": "v"})
	var im map[string]any
	h.getJSON("/image/v2/images/"+id, &im)
	if im["status"] != "active" || im["size"] != float64(0) || im["bdm_v2"] != "True" || im["k"] != "v" {
		t.Errorf("volume-backed image: %v", im)
	}
	if _, ok := im["instance_uuid"]; ok {
		t.Error("volume-backed image carries instance_uuid; Nova does not add it")
	}
	bdmStr, ok := im["block_device_mapping"].(string)
	if !ok {
		t.Fatalf("block_device_mapping is %T, want a JSON string", im["block_device_mapping"])
	}
	var bdm []map[string]any
	mustJSON(t, []byte(bdmStr), &bdm)
	if len(bdm) != 2 {
		t.Fatalf("bdm entries = %d", len(bdm))
	}
	if h.taskState(srv) != nil {
		t.Error("volume-backed snapshot left a task state after the request")
	}
	var snaps []string
	for _, e := range bdm {
		sid := e["snapshot_id"].(string)
		snaps = append(snaps, sid)
		if st, _ := h.snapshotStatus(sid); st != "creating" {
			t.Errorf("snapshot %s %s, want creating", sid, st)
		}
		sn, _ := h.sim.Snapshot(sid)
		if sn.Name != "snapshot for db-1" {
			t.Errorf("snapshot name %q", sn.Name)
		}
	}
	h.sim.Advance(4 * time.Second)
	for _, sid := range snaps {
		if st, _ := h.snapshotStatus(sid); st != "available" {
			t.Errorf("snapshot %s after build: %s", sid, st)
		}
	}
	// Deleting the image leaves its snapshots.
	if resp, _ := h.do("DELETE", "/image/v2/images/"+id, "", nil); resp.StatusCode != 204 {
		t.Fatalf("delete image: %d", resp.StatusCode)
	}
	if _, code := h.imageStatus(id); code != 404 {
		t.Errorf("deleted image: %d", code)
	}
	if resp, _ := h.do("DELETE", "/image/v2/images/"+id, "", nil); resp.StatusCode != 404 {
		t.Errorf("second delete: %d", resp.StatusCode)
	}
	for _, sid := range snaps {
		if st, code := h.snapshotStatus(sid); code != 200 || st != "available" {
			t.Errorf("snapshot after image delete: %d %s", code, st)
		}
	}
	// Cinder deletion is asynchronous; a dependent volume sends it back to available.
	h.sim.AddVolumeFromSnapshot(snaps[1])
	for _, sid := range snaps {
		resp, b := h.volume("DELETE", "/snapshots/"+sid)
		if resp.StatusCode != 202 || len(b) != 0 {
			t.Fatalf("delete snapshot: %d %q", resp.StatusCode, b)
		}
		if st, _ := h.snapshotStatus(sid); st != "deleting" {
			t.Errorf("after delete: %s", st)
		}
	}
	resp, b := h.volume("DELETE", "/snapshots/"+snaps[0])
	if resp.StatusCode != 400 {
		t.Errorf("delete while deleting: %d", resp.StatusCode)
	}
	jsonEqual(t, b, `{"badRequest": {"code": 400, "message": "Invalid snapshot: Volume Snapshot status must be available or error and must not be part of a group."}}`)
	h.sim.Advance(2 * time.Second)
	if _, code := h.snapshotStatus(snaps[0]); code != 404 {
		t.Errorf("deleted snapshot: %d, want 404", code)
	}
	if st, code := h.snapshotStatus(snaps[1]); code != 200 || st != "available" {
		t.Errorf("snapshot with dependent volume: %d %s, want back to available", code, st)
	}
}

func TestFailedAndStuckSnapshots(t *testing.T) {
	h := newHarness(t, Options{ImageBuildTime: 4 * time.Second, SnapshotBuildTime: 2 * time.Second})
	fail := h.sim.AddServer(ServerSpec{})
	stick := h.sim.AddServer(ServerSpec{})
	vol := h.sim.AddServer(ServerSpec{Volumes: 1})
	h.sim.FailNextSnapshot(fail)
	h.sim.StickNextImage(stick)
	h.sim.FailNextVolumeSnapshot(vol)
	f := h.createImage(fail, "f", nil)
	s := h.createImage(stick, "s", nil)
	v := h.createImage(vol, "v", nil)
	h.sim.Advance(time.Second)
	if st, code := h.imageStatus(f); code != 200 || st != "saving" {
		t.Errorf("failing image before the failure: %d %s", code, st)
	}
	h.sim.Advance(time.Second)
	if _, code := h.imageStatus(f); code != 404 {
		t.Errorf("failed image: %d, want 404 (Nova deletes it)", code)
	}
	if h.taskState(fail) != nil {
		t.Error("failed snapshot left a task state")
	}
	h.sim.Advance(time.Hour)
	h.token = h.authenticate() // the hour expired the token
	if st, _ := h.imageStatus(s); st != "saving" {
		t.Errorf("stuck image: %s, want saving forever", st)
	}
	im, _ := h.sim.Image(v)
	if st, _ := h.snapshotStatus(im.SnapshotIDs[0]); st != "error" {
		t.Errorf("failed volume snapshot: %s", st)
	}
	// The flags are one-shot.
	f2 := h.createImage(fail, "f2", nil)
	h.sim.Advance(4 * time.Second)
	if st, _ := h.imageStatus(f2); st != "active" {
		t.Errorf("next snapshot after a failure: %s", st)
	}
}

func TestDeterministicIDs(t *testing.T) {
	ids := func() []string {
		s := New(Options{Seed: 42, DeterministicIDs: true, Now: func() time.Time { return epoch }})
		a := s.AddServer(ServerSpec{})
		b := s.AddServer(ServerSpec{Volumes: 1})
		return []string{a, b, s.Options().ProjectID}
	}
	x, y := ids(), ids()
	if !slices.Equal(x, y) {
		t.Errorf("same seed, different ids: %v %v", x, y)
	}
	if len(x[0]) != 36 || x[0][14] != '4' {
		t.Errorf("not a v4 UUID: %s", x[0])
	}
	z := New(Options{Seed: 43, DeterministicIDs: true}).AddServer(ServerSpec{})
	if z == x[0] {
		t.Error("different seeds gave the same id")
	}
}

// TestIDsDifferAcrossStarts: a real cloud never hands out an id twice, so two
// starts with the same seed must not either (imagekeeper's database outlives a
// simulator restart); the project stays, as a real Keystone's does.
func TestIDsDifferAcrossStarts(t *testing.T) {
	type run struct {
		ids     map[string]bool
		project string
		token   string
	}
	start := func() run {
		h := newHarness(t, Options{Seed: 7})
		r := run{ids: map[string]bool{}, project: h.sim.Options().ProjectID, token: h.token}
		img := h.sim.AddServer(ServerSpec{})
		vol := h.sim.AddServer(ServerSpec{Volumes: 2})
		r.ids[img], r.ids[vol] = true, true
		r.ids[h.createImage(img, "i", nil)] = true
		v := h.createImage(vol, "v", nil)
		r.ids[v] = true
		im, _ := h.sim.Image(v)
		for _, id := range append(im.SnapshotIDs, h.sim.Servers()[1].VolumeIDs...) {
			r.ids[id] = true
		}
		if len(r.ids) != 8 {
			t.Fatalf("ids within one run collide: %v", r.ids)
		}
		return r
	}
	a, b := start(), start()
	for id := range a.ids {
		if b.ids[id] {
			t.Errorf("id %s handed out again after a restart with the same seed", id)
		}
	}
	if a.token == b.token {
		t.Error("the first token is the same after a restart")
	}
	if a.project != b.project {
		t.Errorf("project id changed across restarts: %s, %s", a.project, b.project)
	}
}
