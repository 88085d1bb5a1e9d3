package cloudtest_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
)

func TestMockCallsFieldsAndRecords(t *testing.T) {
	ctx := context.Background()
	m := &cloudtest.Mock{
		CreateImageFunc: func(_ context.Context, serverID, name string, md map[string]string) (string, error) {
			return "img-" + serverID + "-" + name + "-" + md["k"], nil
		},
		DeleteImageFunc: func(context.Context, string) error { return &cloud.Error{Op: "delete image", Kind: cloud.ErrProtected} },
	}
	id, err := m.CreateImage(ctx, "s1", "n", map[string]string{"k": "v"})
	if err != nil || id != "img-s1-n-v" {
		t.Fatalf("CreateImage = %q, %v", id, err)
	}
	if err := m.DeleteImage(ctx, "i1"); !errors.Is(err, cloud.ErrProtected) {
		t.Fatalf("DeleteImage = %v, want ErrProtected", err)
	}
	if _, err := m.ListServers(ctx, cloud.Selector{}); !errors.Is(err, cloudtest.ErrNotMocked) {
		t.Fatalf("unmocked ListServers = %v, want ErrNotMocked", err)
	}
	want := []cloudtest.Call{{Op: cloudtest.OpCreateImage, ID: "s1"}, {Op: cloudtest.OpDeleteImage, ID: "i1"}, {Op: cloudtest.OpListServers}}
	if got := m.Calls(); !slices.Equal(got, want) {
		t.Errorf("Calls = %v, want %v", got, want)
	}
	if n := m.CallCount(cloudtest.OpCreateImage); n != 1 {
		t.Errorf("CallCount(create) = %d", n)
	}
}

func TestFakeRefusesToDeleteProtectedAndKeepsSnapshots(t *testing.T) {
	ctx := context.Background()
	f := cloudtest.NewFake(cloudtest.FakeOptions{})
	snap := f.PutSnapshot(cloud.Snapshot{VolumeID: "v1"})
	img := f.PutImage(cloud.Image{Name: "x", Protected: true, Snapshots: []cloud.SnapshotRef{{SnapshotID: snap}}})
	if err := f.DeleteImage(ctx, img); !errors.Is(err, cloud.ErrProtected) {
		t.Fatalf("DeleteImage(protected) = %v", err)
	}
	f.SetImageProtected(img, false)
	if err := f.DeleteImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	if s, err := f.GetSnapshot(ctx, snap); err != nil || s.Status != cloud.SnapshotAvailable {
		t.Errorf("snapshot after image deletion = %+v, %v", s, err)
	}
}
