package openstack_test

import (
	"reflect"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// TestListServersLeanDecodeMatchesGet: the listing decodes pages into only the
// fields imagekeeper reads; every field it returns must equal what GetServer (the
// full gophercloud decode) says of the same server, across pages.
func TestListServersLeanDecodeMatchesGet(t *testing.T) {
	e := newSim(t, simcloud.Options{MaxLimit: 2})
	c := e.mustClient(t, clientConfig{opts: openstack.Options{PageSize: 2}})
	for _, spec := range []simcloud.ServerSpec{
		{Name: "img", Tags: []string{"a", "b=c"}, AZ: "az1", Metadata: map[string]string{"k": "v", "q": "\"x\""}},
		{Name: "vol", Volumes: 2, Tags: []string{"a"}},
		{Name: "busy", TaskState: "image_snapshot", Status: "ACTIVE", Locked: true},
		{Name: "broken", Status: "ERROR", Tags: []string{}},
		{Name: "bare"},
	} {
		e.sim.AddServer(spec)
	}
	got, err := c.ListServers(ctx(t), cloud.Selector{})
	if err != nil || len(got) != 5 {
		t.Fatalf("ListServers = %d servers, %v; want 5", len(got), err)
	}
	seen := map[string]bool{}
	for _, s := range got {
		seen["volume-backed"] = seen["volume-backed"] || s.VolumeBacked
		seen["image-backed"] = seen["image-backed"] || !s.VolumeBacked
		seen["task state"] = seen["task state"] || s.TaskState != ""
		seen["tags"] = seen["tags"] || len(s.Tags) > 1
		seen["metadata"] = seen["metadata"] || len(s.Metadata) > 1
		seen["zone"] = seen["zone"] || s.AvailabilityZone == "az1"
		seen["locked"] = seen["locked"] || s.Locked
		seen["flavor"] = seen["flavor"] || s.Flavor != ""
		seen["volume ids"] = seen["volume ids"] || len(s.VolumeIDs) == 2
		seen["image id"] = seen["image id"] || s.ImageID != ""
		want, err := c.GetServer(ctx(t), s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(want.Metadata) == 0 && len(s.Metadata) == 0 {
			want.Metadata, s.Metadata = nil, nil
		}
		if !reflect.DeepEqual(s, want) {
			t.Errorf("listed %+v\n   got %+v", s, want)
		}
	}
	if len(seen) != 10 {
		t.Errorf("the listing shows only %v of the fields", seen)
	}
	for k, v := range seen {
		if !v {
			t.Errorf("no listed server has %s", k)
		}
	}
}
