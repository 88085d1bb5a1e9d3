package cloudtest

import (
	"strings"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// bootTests are the contract cases of the restore calls (CreateServer,
// DeleteServer, ConsoleOutput, GetVolume, DeleteVolume); Run runs them with the rest.
var bootTests = []struct {
	name string
	fn   func(t *testing.T, e Env)
}{
	{"CreateServer/ImageBacked", testBootImageBacked},
	{"CreateServer/VolumeBackedMakesVolumesFromSnapshots", testBootVolumeBacked},
	{"CreateServer/Refused", testBootRefused},
	{"CreateServer/QuotaInWords", testBootQuota},
	{"CreateServer/ErrorBootCarriesNovaFault", testBootError},
}

// imageOf makes a settled image of a new server with n volumes (0: image-backed).
func imageOf(t *testing.T, e Env, n int) string {
	t.Helper()
	ctx := ctxFor(t)
	srv := e.Ctl.AddServer(ServerSpec{Name: "src", Volumes: n})
	id, err := e.Cloud.CreateImage(ctx, srv, "src-image", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	e.settle()
	return id
}

func testBootImageBacked(t *testing.T, e Env) {
	ctx := ctxFor(t)
	img := imageOf(t, e, 0)
	md := map[string]string{"imagekeeper_drill": "d1"}
	id, err := e.Cloud.CreateServer(ctx, cloud.BootRequest{Name: "restored", ImageID: img, Flavor: "m1.small", Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if id == "" {
		t.Fatal("CreateServer returned an empty id")
	}
	s, err := e.Cloud.GetServer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != cloud.ServerBuild {
		t.Errorf("new server status %q, want BUILD", s.Status)
	}
	_, err = e.Cloud.ConsoleOutput(ctx, id, 10)
	wantKind(t, "ConsoleOutput while building", err, cloud.ErrBusy)
	e.settle()
	s, err = e.Cloud.GetServer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != cloud.ServerActive || s.ImageID != img || s.Metadata["imagekeeper_drill"] != "d1" || s.Name != "restored" {
		t.Errorf("booted server = %+v, want ACTIVE from image %s with our metadata", s, img)
	}
	if s.Flavor != "2" && s.Flavor != "m1.small" {
		t.Errorf("flavor %q, want m1.small (by id or name)", s.Flavor)
	}
	out, err := e.Cloud.ConsoleOutput(ctx, id, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "login:") || strings.Count(out, "\n") > 1 {
		t.Errorf("console output (2 lines) = %q, want the last two lines with the login prompt", out)
	}
	if err := e.Cloud.DeleteServer(ctx, id); err != nil {
		t.Fatal(err)
	}
	e.settle()
	_, err = e.Cloud.GetServer(ctx, id)
	wantKind(t, "GetServer after delete", err, cloud.ErrNotFound)
	wantKind(t, "DeleteServer again", e.Cloud.DeleteServer(ctx, id), cloud.ErrNotFound)
	if v := e.Ctl.VolumesFromSnapshots(); len(v) != 0 {
		t.Errorf("an image-backed restore made volumes: %+v", v)
	}
}

func testBootVolumeBacked(t *testing.T, e Env) {
	ctx := ctxFor(t)
	img := imageOf(t, e, 2)
	im, err := e.Cloud.GetImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	id, err := e.Cloud.CreateServer(ctx, cloud.BootRequest{Name: "restored-db", ImageID: img, Flavor: "1"})
	if err != nil {
		t.Fatal(err)
	}
	e.settle()
	s, err := e.Cloud.GetServer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != cloud.ServerActive || len(s.VolumeIDs) != 2 {
		t.Fatalf("restored server = %+v, want ACTIVE with two volumes", s)
	}
	fromSnap := map[string]bool{}
	for _, ref := range im.Snapshots {
		fromSnap[ref.SnapshotID] = true
	}
	for _, vid := range s.VolumeIDs {
		v, err := e.Cloud.GetVolume(ctx, vid)
		if err != nil {
			t.Fatal(err)
		}
		if !fromSnap[v.SnapshotID] || v.Status != cloud.VolumeInUse || len(v.AttachedTo) != 1 || v.AttachedTo[0] != id {
			t.Errorf("volume %+v, want in-use, attached to %s, made from one of %v", v, id, im.Snapshots)
		}
		wantKind(t, "DeleteVolume while attached", e.Cloud.DeleteVolume(ctx, vid), cloud.ErrInUse)
	}
	// The snapshots now have dependent volumes: Cinder keeps them.
	for _, ref := range im.Snapshots {
		if err := e.Cloud.DeleteSnapshot(ctx, ref.SnapshotID); err != nil {
			t.Fatal(err)
		}
	}
	e.settle()
	for _, ref := range im.Snapshots {
		if sn, err := e.Cloud.GetSnapshot(ctx, ref.SnapshotID); err != nil || sn.Status != cloud.SnapshotAvailable {
			t.Errorf("snapshot %s with a dependent volume after delete: %+v %v, want available", ref.SnapshotID, sn, err)
		}
	}
	// delete_on_termination is false in the image's mapping: the volumes stay.
	if err := e.Cloud.DeleteServer(ctx, id); err != nil {
		t.Fatal(err)
	}
	e.settle()
	for _, vid := range s.VolumeIDs {
		v, err := e.Cloud.GetVolume(ctx, vid)
		if err != nil {
			t.Fatalf("volume %s after its server was deleted: %v, want left behind", vid, err)
		}
		if v.Status != cloud.VolumeAvailable || len(v.AttachedTo) != 0 {
			t.Errorf("volume after server delete = %+v, want available, detached", v)
		}
		if err := e.Cloud.DeleteVolume(ctx, vid); err != nil {
			t.Fatal(err)
		}
	}
	e.settle()
	for _, vid := range s.VolumeIDs {
		_, err := e.Cloud.GetVolume(ctx, vid)
		wantKind(t, "GetVolume after delete", err, cloud.ErrNotFound)
		wantKind(t, "DeleteVolume again", e.Cloud.DeleteVolume(ctx, vid), cloud.ErrNotFound)
	}
	if v := e.Ctl.VolumesFromSnapshots(); len(v) != 0 {
		t.Errorf("volumes left: %+v", v)
	}
	// Without dependents the snapshots can go now.
	for _, ref := range im.Snapshots {
		if err := e.Cloud.DeleteSnapshot(ctx, ref.SnapshotID); err != nil {
			t.Fatal(err)
		}
	}
	e.settle()
	for _, ref := range im.Snapshots {
		_, err := e.Cloud.GetSnapshot(ctx, ref.SnapshotID)
		wantKind(t, "GetSnapshot once the restored volumes are gone", err, cloud.ErrNotFound)
	}
}

func testBootRefused(t *testing.T, e Env) {
	ctx := ctxFor(t)
	img := imageOf(t, e, 0)
	for _, tc := range []struct {
		what string
		req  cloud.BootRequest
		want string
	}{
		{"unknown flavor", cloud.BootRequest{Name: "x", ImageID: img, Flavor: "m9.huge"}, "m9.huge"},
		{"unknown image", cloud.BootRequest{Name: "x", ImageID: "00000000-0000-4000-8000-000000000000", Flavor: "1"}, "could not be found"},
		{"network by name", cloud.BootRequest{Name: "x", ImageID: img, Flavor: "1", Network: "drill-net"}, "drill-net"},
	} {
		_, err := e.Cloud.CreateServer(ctx, tc.req)
		wantKind(t, tc.what, err, cloud.ErrInvalid)
		if !strings.Contains(cloud.Reason(err), tc.want) {
			t.Errorf("%s: reason %q, want it to mention %q", tc.what, cloud.Reason(err), tc.want)
		}
	}
	// An image that is still being made cannot boot.
	srv := e.Ctl.AddServer(ServerSpec{Name: "slow"})
	queued, err := e.Cloud.CreateImage(ctx, srv, "slow-image", stamp(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Cloud.CreateServer(ctx, cloud.BootRequest{Name: "x", ImageID: queued, Flavor: "1"})
	wantKind(t, "image not active", err, cloud.ErrInvalid)
	if !strings.Contains(cloud.Reason(err), "not active") {
		t.Errorf("image not active: reason %q", cloud.Reason(err))
	}
}

func testBootQuota(t *testing.T, e Env) {
	ctx := ctxFor(t)
	img := imageOf(t, e, 0)
	e.Ctl.SetInstanceQuota(1) // the source server uses it
	_, err := e.Cloud.CreateServer(ctx, cloud.BootRequest{Name: "x", ImageID: img, Flavor: "1"})
	wantKind(t, "boot over quota", err, cloud.ErrQuota)
	if !strings.Contains(cloud.Reason(err), "Quota exceeded for instances") {
		t.Errorf("quota reason %q, want Nova's words", cloud.Reason(err))
	}
}

func testBootError(t *testing.T, e Env) {
	ctx := ctxFor(t)
	img := imageOf(t, e, 0)
	const reason = "No valid host was found. There are not enough hosts available."
	e.Ctl.FailNextBoot(reason)
	id, err := e.Cloud.CreateServer(ctx, cloud.BootRequest{Name: "doomed", ImageID: img, Flavor: "1"})
	if err != nil {
		t.Fatal(err)
	}
	e.settle()
	s, err := e.Cloud.GetServer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != cloud.ServerError || s.Fault != reason {
		t.Errorf("failed boot = status %q fault %q, want ERROR with %q", s.Status, s.Fault, reason)
	}
	if err := e.Cloud.DeleteServer(ctx, id); err != nil {
		t.Errorf("DeleteServer of an ERROR server: %v", err)
	}
}
