package cloud_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// realBDM is the block_device_mapping of a volume-backed server's image as a real
// Nova (Zed) stored it in Glance (reference/nova-responses.md), i.e. the content of
// the JSON string property.
const realBDM = `[{"delete_on_termination": false, "guest_format": null, "device_type": null, "image_id": null,
  "destination_type": "volume", "disk_bus": null, "encryption_options": null, "source_type": "snapshot",
  "boot_index": 0, "device_name": "/dev/sda", "tag": null, "volume_size": 1, "volume_id": null,
  "encrypted": null, "no_device": null, "encryption_secret_uuid": null, "encryption_format": null,
  "volume_type": null, "snapshot_id": "e4e112a7-fb7b-4448-83bb-565938eaf724"}]`

func intp(i int) *int { return &i }

func TestParseBlockDeviceMapping(t *testing.T) {
	doubled, err := json.Marshal(realBDM) // the property as it appears inside a JSON image document
	if err != nil {
		t.Fatal(err)
	}
	want := []cloud.SnapshotRef{{SnapshotID: "e4e112a7-fb7b-4448-83bb-565938eaf724", DeviceName: "/dev/sda", BootIndex: intp(0)}}
	two := `[{"snapshot_id": "a", "device_name": "/dev/vda", "boot_index": 0},
	         {"source_type": "blank", "destination_type": "local", "guest_format": "swap", "boot_index": -1},
	         {"snapshot_id": "b", "device_name": "/dev/vdb", "boot_index": null},
	         {"snapshot_id": "a", "device_name": "/dev/vda", "boot_index": 0},
	         {"snapshot_id": ""}]`
	tests := []struct {
		name string
		in   string
		want []cloud.SnapshotRef
	}{
		{"real Nova mapping", realBDM, want},
		{"double-encoded", string(doubled), want},
		{"double-encoded with spaces", "  " + string(doubled) + "\n", want},
		{"empty means image-backed", "", nil},
		{"blank only", "   ", nil},
		{"empty list", "[]", nil},
		{"skips entries without snapshot and duplicates",
			two, []cloud.SnapshotRef{{SnapshotID: "a", DeviceName: "/dev/vda", BootIndex: intp(0)}, {SnapshotID: "b", DeviceName: "/dev/vdb"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cloud.ParseBlockDeviceMapping(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tc.want, refEqual) {
				t.Errorf("got %s, want %s", show(got), show(tc.want))
			}
		})
	}
}

func TestParseBlockDeviceMappingMalformed(t *testing.T) {
	for _, in := range []string{
		`{`,
		`{"snapshot_id": "a"}`,     // an object, not a list
		`"not json inside"`,        // a string whose content is not a list
		`"[{\"snapshot_id\": 5}]"`, // wrong type inside
		`[{"snapshot_id": "a"}`,    // truncated
		`"\"[{}]\""`,               // encoded three times
		`[{"boot_index": "zero", "snapshot_id": "a"}]`,
		`"unterminated`,
	} {
		got, err := cloud.ParseBlockDeviceMapping(in)
		if err == nil {
			t.Errorf("ParseBlockDeviceMapping(%q) = %s, want an error", in, show(got))
			continue
		}
		if !strings.HasPrefix(err.Error(), "block_device_mapping: ") {
			t.Errorf("error %q does not name the property", err)
		}
	}
}

// FuzzParseBlockDeviceMapping checks that no input panics, and that whatever is
// accepted names each snapshot once, never an empty id.
func FuzzParseBlockDeviceMapping(f *testing.F) {
	doubled, _ := json.Marshal(realBDM)
	for _, s := range []string{realBDM, string(doubled), "", "[]", `"[]"`, `[{"snapshot_id":"a"},{"snapshot_id":"a"}]`, `{`, `"`, `[null]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		refs, err := cloud.ParseBlockDeviceMapping(in)
		if err != nil {
			if refs != nil {
				t.Errorf("error %v with refs %v", err, refs)
			}
			return
		}
		seen := map[string]bool{}
		for _, r := range refs {
			if r.SnapshotID == "" || seen[r.SnapshotID] {
				t.Errorf("bad refs %s from %q", show(refs), in)
			}
			seen[r.SnapshotID] = true
		}
	})
}

func refEqual(a, b cloud.SnapshotRef) bool {
	if a.SnapshotID != b.SnapshotID || a.DeviceName != b.DeviceName || (a.BootIndex == nil) != (b.BootIndex == nil) {
		return false
	}
	return a.BootIndex == nil || *a.BootIndex == *b.BootIndex
}

func show(refs []cloud.SnapshotRef) string {
	var parts []string
	for _, r := range refs {
		bi := "nil"
		if r.BootIndex != nil {
			bi = strconv.Itoa(*r.BootIndex)
		}
		parts = append(parts, r.SnapshotID+"@"+r.DeviceName+"#"+bi)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func TestStampRoundTrip(t *testing.T) {
	s := cloud.Stamp{Owner: "o", Policy: "p", Server: "s", Slot: "2026-01-01T02:30:00Z"}
	props := s.Properties()
	for k := range props {
		if !cloud.IsStampKey(k) {
			t.Errorf("stamp key %q lacks the reserved prefix", k)
		}
	}
	got, ok := cloud.StampOf(props)
	if !ok || got != s {
		t.Errorf("StampOf(Properties()) = %+v, %v; want %+v", got, ok, s)
	}
	delete(props, cloud.StampSlot)
	if _, ok := cloud.StampOf(props); ok {
		t.Error("StampOf accepted a stamp without slot")
	}
	if cloud.IsStampKey("ImageType") {
		t.Error("IsStampKey(ImageType) = true")
	}
}
