package cloud

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Stamp keys: imagekeeper adds these to every image it requests, as createImage
// metadata, so Nova copies them into Glance properties. The imagekeeper_ prefix is
// reserved: policies may not use it.
const (
	StampPrefix = "imagekeeper_"
	StampOwner  = "imagekeeper_owner"  // this installation's id, from the store
	StampPolicy = "imagekeeper_policy" // policy name
	StampServer = "imagekeeper_server" // source server id
	StampSlot   = "imagekeeper_slot"   // the slot, RFC 3339 in UTC
	// StampConsistency says how consistent the image is: ConsistencyApplication
	// when the policy's pre hook succeeded before createImage, ConsistencyCrash
	// when it failed (on_failure: continue). Absent on images of policies without
	// hooks, which are crash-consistent. It is not part of the identity (StampOf).
	StampConsistency = "imagekeeper_consistency"
)

// Values of StampConsistency.
const (
	ConsistencyApplication = "application"
	ConsistencyCrash       = "crash"
)

// Stamp identifies who asked for an image and for which (policy, server, slot).
// A stamp in the cloud alone proves nothing (a snapshot of a server booted from one
// of our images inherits it); ownership needs the stamp and a lineage row.
type Stamp struct {
	Owner  string
	Policy string
	Server string
	Slot   string
}

// Properties returns the stamp as image metadata.
func (s Stamp) Properties() map[string]string {
	return map[string]string{
		StampOwner:  s.Owner,
		StampPolicy: s.Policy,
		StampServer: s.Server,
		StampSlot:   s.Slot,
	}
}

// StampOf reads the stamp from an image's properties; ok is false when any key is
// missing.
func StampOf(props map[string]string) (Stamp, bool) {
	s := Stamp{
		Owner:  props[StampOwner],
		Policy: props[StampPolicy],
		Server: props[StampServer],
		Slot:   props[StampSlot],
	}
	return s, s.Owner != "" && s.Policy != "" && s.Server != "" && s.Slot != ""
}

// IsStampKey reports whether a metadata key is reserved for the stamp.
func IsStampKey(key string) bool {
	return strings.HasPrefix(key, StampPrefix)
}

// ParseBlockDeviceMapping decodes the block_device_mapping property of a
// volume-backed server's image and returns the volume snapshots it names.
//
// Nova json-dumps the mapping before it hands it to Glance, so the property is a JSON
// string whose content is a JSON array; some paths deliver the array itself. Both are
// accepted. Entries without a snapshot_id (swap, ephemeral, blank) are skipped. An
// empty input means an image-backed server and yields no snapshots.
func ParseBlockDeviceMapping(raw string) ([]SnapshotRef, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, nil
	}
	if strings.HasPrefix(raw, `"`) {
		var inner string
		if err := json.Unmarshal([]byte(raw), &inner); err != nil {
			return nil, fmt.Errorf("block_device_mapping: decode outer string: %w", err)
		}
		raw = strings.TrimSpace(inner)
	}
	var entries []struct {
		SnapshotID *string `json:"snapshot_id"`
		DeviceName *string `json:"device_name"`
		BootIndex  *int    `json:"boot_index"`
		SourceType *string `json:"source_type"`
	}
	if err := json.Unmarshal([]byte(raw), &entries); err != nil {
		return nil, fmt.Errorf("block_device_mapping: decode entries: %w", err)
	}
	var refs []SnapshotRef
	seen := map[string]bool{}
	for _, e := range entries {
		if e.SnapshotID == nil || *e.SnapshotID == "" {
			continue
		}
		if seen[*e.SnapshotID] {
			continue
		}
		seen[*e.SnapshotID] = true
		ref := SnapshotRef{SnapshotID: *e.SnapshotID, BootIndex: e.BootIndex}
		if e.DeviceName != nil {
			ref.DeviceName = *e.DeviceName
		}
		refs = append(refs, ref)
	}
	return refs, nil
}
