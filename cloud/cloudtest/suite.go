package cloudtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// suitePageSize is small so that a handful of servers spans several pages.
const suitePageSize = 3

// Run is the contract every cloud.Cloud must pass. newEnv makes a fresh cloud for
// each subtest; subtests run in parallel.
func Run(t *testing.T, newEnv func(t *testing.T, opts EnvOptions) Env) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, e Env)
	}{
		{"ListServers/NovaTagSemantics", testTagSemantics},
		{"ListServers/FiltersServerSideAcrossPages", testTagFiltersPaged},
		{"ListServers/KeyValueTagsAcrossPages", testKeyValueTagsPaged},
		{"ListServers/AvailabilityZone", testAvailabilityZone},
		{"GetServer", testGetServer},
		{"CreateImage/ImageBackedLifecycle", testImageBackedLifecycle},
		{"CreateImage/BusyServer", testBusyServer},
		{"CreateImage/ErrorServer", testErrorServer},
		{"CreateImage/UnknownServer", testCreateUnknownServer},
		{"CreateImage/InvalidRequest", testCreateInvalid},
		{"CreateImage/VolumeBacked", testVolumeBacked},
		{"CreateImage/FailedSnapshot", testFailedSnapshot},
		{"CreateImage/EmptyID", testEmptyImageID},
		{"CreateImage/5xxNotRetried", testCreateImage5xx},
		{"ListImages/ByStampAcrossPages", testListImagesPaged},
		{"DeleteImage/Protected", testProtectedImage},
		{"DeleteSnapshot/InUse", testSnapshotInUse},
		{"Faults/503OnGetRetried", testGet503},
		{"Faults/429RetryAfterHonoured", testRetryAfter},
		{"Faults/PersistentFailureIsUnavailable", testPersistent5xx},
		{"TokenExpiry", testTokenExpiry},
	}
	tests = append(tests, bootTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, EnvOptions{PageSize: suitePageSize})
			if e.Cloud == nil || e.Ctl == nil {
				t.Fatal("newEnv returned an Env without Cloud or Ctl")
			}
			tc.fn(t, e)
		})
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e Env) settle() {
	d := e.Settle
	if d <= 0 {
		d = time.Hour
	}
	e.Ctl.Advance(d)
}

func ids(servers []cloud.Server) []string {
	out := make([]string, 0, len(servers))
	for _, s := range servers {
		out = append(out, s.ID)
	}
	sort.Strings(out)
	return out
}

func sorted(in ...string) []string {
	out := append([]string{}, in...)
	sort.Strings(out)
	return out
}

func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: error %v, want %v", what, err, kind)
	}
}

// stamp returns a metadata map unique to the test, to find its images.
func stamp(t *testing.T, extra string) map[string]string {
	return map[string]string{
		cloud.StampOwner:  "cloudtest",
		cloud.StampPolicy: strings.ReplaceAll(t.Name(), "/", "-"),
		cloud.StampServer: extra,
		cloud.StampSlot:   "2026-01-01T00:00:00Z",
	}
}

// testTagSemantics checks Nova's filter semantics with the servers and queries of
// reference/nova-responses.md (captured from a real Nova).
func testTagSemantics(t *testing.T, e Env) {
	ctx := ctxFor(t)
	s1 := e.Ctl.AddServer(ServerSpec{Name: "s1", Tags: []string{"backup", "daily"}})
	s2 := e.Ctl.AddServer(ServerSpec{Name: "s2", Tags: []string{"backup", "weekly"}})
	s3 := e.Ctl.AddServer(ServerSpec{Name: "s3", Tags: []string{"other"}})
	v := e.Ctl.AddServer(ServerSpec{Name: "v", Tags: []string{"backup", "bfv"}, Volumes: 1})
	rows := []struct {
		sel  cloud.Selector
		want []string
	}{
		{cloud.Selector{Tags: []string{"backup", "daily"}}, []string{s1}},
		{cloud.Selector{Tags: []string{"backup"}}, []string{v, s1, s2}},
		{cloud.Selector{TagsAny: []string{"daily", "weekly"}}, []string{s1, s2}},
		{cloud.Selector{TagsAny: []string{"other", "bfv"}}, []string{v, s3}},
		{cloud.Selector{ExcludeTags: []string{"daily", "bfv"}}, []string{s2, s3}},
		{cloud.Selector{Tags: []string{"backup"}, TagsAny: []string{"weekly", "bfv"}}, []string{v, s2}},
		{cloud.Selector{}, []string{s1, s2, s3, v}},
		{cloud.Selector{Tags: []string{"nothing-has-this"}}, nil},
	}
	for _, r := range rows {
		got, err := e.Cloud.ListServers(ctx, r.sel)
		if err != nil {
			t.Fatalf("ListServers(%+v): %v", r.sel, err)
		}
		if g, w := ids(got), sorted(r.want...); !slices.Equal(g, w) {
			t.Errorf("ListServers(%+v) = %v, want %v", r.sel, g, w)
		}
	}
	got, err := e.Cloud.ListServers(ctx, cloud.Selector{Tags: []string{"bfv"}})
	if err != nil || len(got) != 1 {
		t.Fatalf("ListServers(bfv) = %v, %v; want server v", got, err)
	}
	if s := got[0]; s.Name != "v" || !s.VolumeBacked || s.Status != "ACTIVE" || s.AvailabilityZone == "" ||
		!slices.Equal(sorted(s.Tags...), []string{"backup", "bfv"}) {
		t.Errorf("server v = %+v, want name v, volume-backed, ACTIVE, an AZ, tags [backup bfv]", s)
	}
}

// testTagFiltersPaged checks that the filters go to the cloud: the matching servers
// span several pages, and far fewer list requests are made than an unfiltered
// listing would need.
func testTagFiltersPaged(t *testing.T, e Env) {
	ctx := ctxFor(t)
	var want []string
	for i := range 8 {
		want = append(want, e.Ctl.AddServer(ServerSpec{Name: fmt.Sprintf("web-%d", i), Tags: []string{"backup", "daily"}}))
	}
	e.Ctl.AddServer(ServerSpec{Name: "excluded", Tags: []string{"backup", "daily", "no-backup"}})
	for i := range 16 {
		e.Ctl.AddServer(ServerSpec{Name: fmt.Sprintf("other-%d", i), Tags: []string{"other"}})
	}
	before := e.Ctl.Requests(OpListServers)
	got, err := e.Cloud.ListServers(ctx, cloud.Selector{Tags: []string{"backup"}, TagsAny: []string{"daily", "weekly"}, ExcludeTags: []string{"no-backup"}})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := ids(got), sorted(want...); !slices.Equal(g, w) {
		t.Fatalf("ListServers = %v, want %v", g, w)
	}
	if !e.Paged {
		return
	}
	n := e.Ctl.Requests(OpListServers) - before
	// 8 matches in pages of 3: 3 pages, plus possibly one empty page. Unfiltered,
	// 25 servers would need at least 9.
	if n < 3 || n > 4 {
		t.Errorf("list requests = %d, want 3 or 4 (filters applied by the cloud, every page followed)", n)
	}
}

// testKeyValueTagsPaged: Huawei-style key=value tags in an any-of filter whose
// matches span pages. Nova's next link carries the filter re-encoded (a comma as
// %2C, "=" as %3D); following it must keep the filter.
func testKeyValueTagsPaged(t *testing.T, e Env) {
	ctx := ctxFor(t)
	var want []string
	for i := range 5 {
		want = append(want, e.Ctl.AddServer(ServerSpec{Name: fmt.Sprintf("daily-%d", i), Tags: []string{"backup=daily", "env=prod"}}))
	}
	for i := range 2 {
		want = append(want, e.Ctl.AddServer(ServerSpec{Name: fmt.Sprintf("weekly-%d", i), Tags: []string{"backup=weekly"}}))
	}
	for i := range 6 {
		e.Ctl.AddServer(ServerSpec{Name: fmt.Sprintf("monthly-%d", i), Tags: []string{"backup=monthly", "env=prod"}})
	}
	before := e.Ctl.Requests(OpListServers)
	got, err := e.Cloud.ListServers(ctx, cloud.Selector{TagsAny: []string{"backup=daily", "backup=weekly"}})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := ids(got), sorted(want...); !slices.Equal(g, w) {
		t.Fatalf("ListServers(any of backup=daily, backup=weekly) = %v, want %v", g, w)
	}
	if !e.Paged {
		return
	}
	// 7 matches in pages of 3: 3 pages, plus possibly one empty page.
	if n := e.Ctl.Requests(OpListServers) - before; n < 3 || n > 4 {
		t.Errorf("list requests = %d, want 3 or 4 (the filter kept on every page)", n)
	}
}

func testAvailabilityZone(t *testing.T, e Env) {
	ctx := ctxFor(t)
	a := e.Ctl.AddServer(ServerSpec{Name: "a", AZ: "az1", Tags: []string{"backup"}})
	e.Ctl.AddServer(ServerSpec{Name: "b", AZ: "az2", Tags: []string{"backup"}})
	c := e.Ctl.AddServer(ServerSpec{Name: "c", AZ: "az3", Tags: []string{"backup"}})
	got, err := e.Cloud.ListServers(ctx, cloud.Selector{Tags: []string{"backup"}, AvailabilityZones: []string{"az1", "az3"}})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := ids(got), sorted(a, c); !slices.Equal(g, w) {
		t.Errorf("ListServers(az1, az3) = %v, want %v", g, w)
	}
}

func testGetServer(t *testing.T, e Env) {
	ctx := ctxFor(t)
	id := e.Ctl.AddServer(ServerSpec{Name: "db-1", AZ: "az1", Status: "SHUTOFF", Tags: []string{"x"}})
	s, err := e.Cloud.GetServer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != id || s.Name != "db-1" || s.AvailabilityZone != "az1" || s.Status != "SHUTOFF" || s.VolumeBacked || s.TaskState != "" {
		t.Errorf("GetServer = %+v", s)
	}
	_, err = e.Cloud.GetServer(ctx, "00000000-0000-4000-8000-000000000000")
	wantKind(t, "GetServer(unknown)", err, cloud.ErrNotFound)
}

func testImageBackedLifecycle(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web", Status: "SHUTOFF"})
	md := stamp(t, srv)
	md["ImageType"] = "Gold"
	id, err := e.Cloud.CreateImage(ctx, srv, "web-20260101", md)
	if err != nil {
		t.Fatal(err)
	}
	if id == "" {
		t.Fatal("CreateImage returned an empty id and no error")
	}
	im, err := e.Cloud.GetImage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if im.ID != id || im.Name != "web-20260101" || im.Status == cloud.ImageActive || len(im.Snapshots) != 0 {
		t.Errorf("new image = %+v, want not yet active, named, without snapshots", im)
	}
	for k, v := range md {
		if im.Properties[k] != v {
			t.Errorf("property %s = %q, want %q", k, im.Properties[k], v)
		}
	}
	if s, err := e.Cloud.GetServer(ctx, srv); err != nil || s.TaskState == "" {
		t.Errorf("server during snapshot: task state %q, err %v; want a task in progress", s.TaskState, err)
	}
	e.settle()
	im, err = e.Cloud.GetImage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if im.Status != cloud.ImageActive || im.Size <= 0 {
		t.Errorf("settled image: status %q size %d, want active with data", im.Status, im.Size)
	}
	if s, err := e.Cloud.GetServer(ctx, srv); err != nil || s.TaskState != "" {
		t.Errorf("server after snapshot: task state %q, err %v; want none", s.TaskState, err)
	}
	if err := e.Cloud.DeleteImage(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = e.Cloud.GetImage(ctx, id)
	wantKind(t, "GetImage after delete", err, cloud.ErrNotFound)
	wantKind(t, "DeleteImage again", e.Cloud.DeleteImage(ctx, id), cloud.ErrNotFound)
}

func testBusyServer(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "busy"})
	if _, err := e.Cloud.CreateImage(ctx, srv, "first", stamp(t, srv)); err != nil {
		t.Fatal(err)
	}
	_, err := e.Cloud.CreateImage(ctx, srv, "second", stamp(t, srv))
	wantKind(t, "second CreateImage while the first runs", err, cloud.ErrBusy)
	if r := cloud.Reason(err); !strings.Contains(r, "task_state") {
		t.Errorf("busy reason %q does not name the task state", r)
	}
	if !cloud.Retryable(err) {
		t.Error("busy is not Retryable")
	}
	e.settle()
	if _, err := e.Cloud.CreateImage(ctx, srv, "third", stamp(t, srv)); err != nil {
		t.Errorf("CreateImage after the first finished: %v", err)
	}

	other := e.Ctl.AddServer(ServerSpec{Name: "rebooting"})
	e.Ctl.SetServerTaskState(other, "rebooting")
	_, err = e.Cloud.CreateImage(ctx, other, "x", stamp(t, other))
	wantKind(t, "CreateImage on a rebooting server", err, cloud.ErrBusy)
}

func testErrorServer(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "broken"})
	e.Ctl.SetServerStatus(srv, "ERROR")
	_, err := e.Cloud.CreateImage(ctx, srv, "x", stamp(t, srv))
	wantKind(t, "CreateImage on an ERROR server", err, cloud.ErrBusy)
	r := cloud.Reason(err)
	if !strings.Contains(r, "vm_state error") || strings.Contains(r, "task_state") {
		t.Errorf("ERROR reason %q should name vm_state error (and not a task)", r)
	}
	if n := e.Ctl.CreateImageCalls(srv); n != 1 {
		t.Errorf("createImage calls = %d, want 1 (409 is not retried)", n)
	}
}

func testCreateUnknownServer(t *testing.T, e Env) {
	ctx := ctxFor(t)
	_, err := e.Cloud.CreateImage(ctx, "00000000-0000-4000-8000-000000000000", "x", nil)
	wantKind(t, "CreateImage(unknown server)", err, cloud.ErrNotFound)
}

func testCreateInvalid(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web"})
	cases := []struct {
		name string
		md   map[string]string
	}{
		{"ok-name", map[string]string{"imagekeeper/policy": "x"}},     // '/' is not allowed in keys
		{"ok-name", map[string]string{"": "x"}},                       // empty key
		{"ok-name", map[string]string{strings.Repeat("k", 256): "x"}}, // key too long
		{"ok-name", map[string]string{"k": strings.Repeat("v", 256)}}, // value too long
		{" leading-space", nil},                                       // Nova trims nothing: refused
		{strings.Repeat("n", 256), nil},                               // name too long
		{"", map[string]string{"k": "v"}},                             // name missing
	}
	for _, c := range cases {
		_, err := e.Cloud.CreateImage(ctx, srv, c.name, c.md)
		if !errors.Is(err, cloud.ErrInvalid) {
			t.Errorf("CreateImage(name %.20q, metadata %.40v): %v, want ErrInvalid", c.name, c.md, err)
		}
		if cloud.Retryable(err) {
			t.Errorf("invalid request reported as retryable: %v", err)
		}
	}
	if s, err := e.Cloud.GetServer(ctx, srv); err != nil || s.TaskState != "" {
		t.Errorf("server after refused requests: task %q, err %v; want idle", s.TaskState, err)
	}
}

func testVolumeBacked(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "db", Volumes: 2})
	id, err := e.Cloud.CreateImage(ctx, srv, "db-image", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	im, err := e.Cloud.GetImage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if im.Status != cloud.ImageActive || im.Size != 0 {
		t.Errorf("volume-backed image: status %q size %d, want active at once with size 0", im.Status, im.Size)
	}
	if len(im.Snapshots) != 2 || im.Snapshots[0].SnapshotID == im.Snapshots[1].SnapshotID {
		t.Fatalf("snapshots = %+v, want two distinct", im.Snapshots)
	}
	for _, ref := range im.Snapshots {
		s, err := e.Cloud.GetSnapshot(ctx, ref.SnapshotID)
		if err != nil {
			t.Fatal(err)
		}
		if s.Status != cloud.SnapshotCreating && s.Status != cloud.SnapshotAvailable {
			t.Errorf("new snapshot %s status %q", s.ID, s.Status)
		}
		if s.VolumeID == "" {
			t.Errorf("snapshot %s has no volume id", s.ID)
		}
	}
	e.settle()
	all, err := e.Cloud.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]cloud.Snapshot{}
	for _, s := range all {
		byID[s.ID] = s
	}
	for _, ref := range im.Snapshots {
		if s, ok := byID[ref.SnapshotID]; !ok || s.Status != cloud.SnapshotAvailable {
			t.Errorf("snapshot %s after settling: %+v (listed %v), want available", ref.SnapshotID, s, ok)
		}
	}
	// Deleting the image leaves its snapshots: cleaning them is our job.
	if err := e.Cloud.DeleteImage(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, ref := range im.Snapshots {
		if _, err := e.Cloud.GetSnapshot(ctx, ref.SnapshotID); err != nil {
			t.Errorf("snapshot %s after its image was deleted: %v, want still there", ref.SnapshotID, err)
		}
		if err := e.Cloud.DeleteSnapshot(ctx, ref.SnapshotID); err != nil {
			t.Errorf("DeleteSnapshot(%s): %v", ref.SnapshotID, err)
		}
	}
	e.settle()
	for _, ref := range im.Snapshots {
		_, err := e.Cloud.GetSnapshot(ctx, ref.SnapshotID)
		wantKind(t, "GetSnapshot after deletion", err, cloud.ErrNotFound)
		wantKind(t, "DeleteSnapshot again", e.Cloud.DeleteSnapshot(ctx, ref.SnapshotID), cloud.ErrNotFound)
	}
}

func testFailedSnapshot(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "flaky"})
	e.Ctl.FailNextSnapshot(srv)
	id, err := e.Cloud.CreateImage(ctx, srv, "doomed", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	e.settle()
	_, err = e.Cloud.GetImage(ctx, id)
	wantKind(t, "GetImage of a failed snapshot", err, cloud.ErrNotFound)
	if s, err := e.Cloud.GetServer(ctx, srv); err != nil || s.TaskState != "" {
		t.Errorf("server after failed snapshot: task %q, err %v; want idle", s.TaskState, err)
	}
}

func testEmptyImageID(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web"})
	if !e.Ctl.InjectFault(Fault{Op: OpCreateImage, EmptyImageID: true}) {
		t.Skip("cloud cannot answer createImage without an id")
	}
	id, err := e.Cloud.CreateImage(ctx, srv, "no-id", stamp(t, srv))
	if err == nil || id != "" {
		t.Fatalf("CreateImage without an id in the answer = %q, %v; want an error", id, err)
	}
	// The image was made: the caller must look for it, not call again.
	wantKind(t, "CreateImage without an id", err, cloud.ErrUnknownOutcome)
	imgs, err := e.Cloud.ListImages(ctx, stamp(t, srv))
	if err != nil || len(imgs) != 1 {
		t.Errorf("stamped images after an answer without id: %d, %v; want the one image", len(imgs), err)
	}
}

func testCreateImage5xx(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web"})
	if !e.Ctl.InjectFault(Fault{Op: OpCreateImage, Status: 503, Count: 5}) {
		t.Skip("cloud cannot inject faults")
	}
	_, err := e.Cloud.CreateImage(ctx, srv, "x", stamp(t, srv))
	wantKind(t, "CreateImage answered 503", err, cloud.ErrUnknownOutcome)
	if cloud.Retryable(err) {
		t.Error("ErrUnknownOutcome must not be Retryable: the caller looks first")
	}
	if n := e.Ctl.CreateImageCalls(srv); n != 1 {
		t.Errorf("createImage calls = %d, want exactly 1 (never retried blindly)", n)
	}
}

func testListImagesPaged(t *testing.T, e Env) {
	ctx := ctxFor(t)
	common := stamp(t, "")
	delete(common, cloud.StampServer)
	var want []string
	for i := range 7 {
		srv := e.Ctl.AddServer(ServerSpec{Name: fmt.Sprintf("s%d", i)})
		md := stamp(t, srv)
		id, err := e.Cloud.CreateImage(ctx, srv, fmt.Sprintf("img-%d", i), md)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	other := e.Ctl.AddServer(ServerSpec{Name: "other"})
	if _, err := e.Cloud.CreateImage(ctx, other, "not-ours", map[string]string{cloud.StampPolicy: "someone-else"}); err != nil {
		t.Fatal(err)
	}
	e.settle()
	before := e.Ctl.Requests(OpListImages)
	got, err := e.Cloud.ListImages(ctx, common)
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	for _, im := range got {
		gotIDs = append(gotIDs, im.ID)
		if im.Status != cloud.ImageActive {
			t.Errorf("image %s status %q, want active", im.ID, im.Status)
		}
	}
	sort.Strings(gotIDs)
	if w := sorted(want...); !slices.Equal(gotIDs, w) {
		t.Errorf("ListImages(stamp) = %v, want %v", gotIDs, w)
	}
	if e.Paged {
		if n := e.Ctl.Requests(OpListImages) - before; n < 3 {
			t.Errorf("image list requests = %d, want >= 3 pages", n)
		}
	}
	one := stamp(t, "")
	one[cloud.StampServer] = other
	if got, err := e.Cloud.ListImages(ctx, one); err != nil || len(got) != 0 {
		t.Errorf("ListImages(no match) = %v, %v; want none", got, err)
	}
}

func testProtectedImage(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web"})
	id, err := e.Cloud.CreateImage(ctx, srv, "keep-me", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	e.settle()
	e.Ctl.SetImageProtected(id, true)
	err = e.Cloud.DeleteImage(ctx, id)
	wantKind(t, "DeleteImage(protected)", err, cloud.ErrProtected)
	if cloud.Retryable(err) {
		t.Error("protected must not be Retryable")
	}
	im, err := e.Cloud.GetImage(ctx, id)
	if err != nil || !im.Protected {
		t.Fatalf("protected image after refused delete: %+v, %v", im, err)
	}
	e.Ctl.SetImageProtected(id, false)
	if err := e.Cloud.DeleteImage(ctx, id); err != nil {
		t.Errorf("DeleteImage after unprotecting: %v", err)
	}
}

func testSnapshotInUse(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "db", Volumes: 1})
	id, err := e.Cloud.CreateImage(ctx, srv, "db-image", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	im, err := e.Cloud.GetImage(ctx, id)
	if err != nil || len(im.Snapshots) != 1 {
		t.Fatalf("image %+v, %v; want one snapshot", im, err)
	}
	snap := im.Snapshots[0].SnapshotID
	// Cinder accepts deletion only of available or error snapshots.
	if s, _ := e.Cloud.GetSnapshot(ctx, snap); s.Status == cloud.SnapshotCreating {
		err = e.Cloud.DeleteSnapshot(ctx, snap)
		wantKind(t, "DeleteSnapshot(creating)", err, cloud.ErrInUse)
	}
	e.settle()
	e.Ctl.AddVolumeFromSnapshot(snap)
	err = e.Cloud.DeleteSnapshot(ctx, snap)
	if err != nil && !errors.Is(err, cloud.ErrInUse) {
		t.Fatalf("DeleteSnapshot(with a dependent volume): %v, want accepted or ErrInUse", err)
	}
	e.settle()
	// Cinder puts a snapshot with dependent volumes back to available.
	s, err := e.Cloud.GetSnapshot(ctx, snap)
	if err != nil || s.Status != cloud.SnapshotAvailable {
		t.Errorf("snapshot with a dependent volume after delete: %+v, %v; want still available", s, err)
	}
}

func testGet503(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web"})
	if !e.Ctl.InjectFault(Fault{Op: OpGetServer, Status: 503, Count: 1}) {
		t.Skip("cloud cannot inject faults")
	}
	before := e.Ctl.Requests(OpGetServer)
	s, err := e.Cloud.GetServer(ctx, srv)
	if !e.Retries {
		wantKind(t, "GetServer answered 503", err, cloud.ErrUnavailable)
		return
	}
	if err != nil || s.ID != srv {
		t.Fatalf("GetServer after one 503: %+v, %v; want retried and found", s, err)
	}
	if n := e.Ctl.Requests(OpGetServer) - before; n != 2 {
		t.Errorf("get requests = %d, want 2 (one 503, one retry)", n)
	}
}

func testRetryAfter(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web", Tags: []string{"backup"}})
	const after = time.Second
	if !e.Ctl.InjectFault(Fault{Op: OpListServers, Status: 429, RetryAfter: after, Count: 1}) {
		t.Skip("cloud cannot inject faults")
	}
	before := e.Ctl.Requests(OpListServers)
	start := time.Now()
	got, err := e.Cloud.ListServers(ctx, cloud.Selector{Tags: []string{"backup"}})
	elapsed := time.Since(start)
	if !e.Retries {
		wantKind(t, "ListServers answered 429", err, cloud.ErrUnavailable)
		return
	}
	if err != nil || len(got) != 1 || got[0].ID != srv {
		t.Fatalf("ListServers after a 429: %v, %v", got, err)
	}
	if n := e.Ctl.Requests(OpListServers) - before; n != 2 {
		t.Errorf("list requests = %d, want 2 (the 429 and one retry)", n)
	}
	// The retry cannot have been sent before Retry-After elapsed.
	if elapsed < after {
		t.Errorf("retried after %v, before Retry-After %v", elapsed, after)
	}
}

func testPersistent5xx(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web"})
	id, err := e.Cloud.CreateImage(ctx, srv, "img", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	if !e.Ctl.InjectFault(Fault{Op: OpDeleteImage, Status: 500, Count: 100}) {
		t.Skip("cloud cannot inject faults")
	}
	err = e.Cloud.DeleteImage(ctx, id)
	wantKind(t, "DeleteImage answering 500", err, cloud.ErrUnavailable)
	if !cloud.Retryable(err) {
		t.Error("ErrUnavailable must be Retryable")
	}
	if _, err := e.Cloud.GetImage(ctx, id); err != nil {
		t.Errorf("image after failed deletes: %v, want still there", err)
	}
}

func testTokenExpiry(t *testing.T, e Env) {
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "web", Tags: []string{"backup"}})
	if _, err := e.Cloud.ListServers(ctx, cloud.Selector{Tags: []string{"backup"}}); err != nil {
		t.Fatal(err)
	}
	e.Ctl.ExpireTokens()
	got, err := e.Cloud.ListServers(ctx, cloud.Selector{Tags: []string{"backup"}})
	if err != nil || len(got) != 1 {
		t.Fatalf("ListServers after token expiry: %v, %v", got, err)
	}
	e.Ctl.ExpireTokens()
	id, err := e.Cloud.CreateImage(ctx, srv, "after-expiry", stamp(t, srv))
	if err != nil {
		t.Fatalf("CreateImage after token expiry: %v", err)
	}
	if n := e.Ctl.CreateImageCalls(srv); n > 2 {
		t.Errorf("createImage calls = %d, want at most 2 (one refused with 401, one replay)", n)
	}
	e.Ctl.ExpireTokens()
	if _, err := e.Cloud.GetImage(ctx, id); err != nil {
		t.Errorf("GetImage after token expiry: %v", err)
	}
}
