package simcloud

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
)

// Cinder's volume API microversions (Zed: 3.0 to 3.70).
var (
	minVolume = version{3, 0}
	maxVolume = version{3, 70}
)

func (s *Sim) routeVolume(q *req) route {
	segs := q.segs
	get := q.r.Method == http.MethodGet
	if len(segs) == 0 {
		if get {
			return route{op: "volume.versions", handle: func(q *req) { s.volumeVersions(q, http.StatusMultipleChoices) }}
		}
		return s.volumeOther()
	}
	if segs[0] != "v3" {
		return s.volumeOther()
	}
	segs = segs[1:]
	if len(segs) > 0 && segs[0] == s.opts.ProjectID {
		segs = segs[1:]
	}
	q.segs = segs
	if len(segs) == 0 {
		if get {
			return route{op: "volume.versions", handle: func(q *req) { s.volumeVersions(q, http.StatusOK) }}
		}
		return s.volumeOther()
	}
	switch segs[0] {
	case "snapshots":
		switch {
		case len(segs) == 1 && get:
			return route{op: "volume.snapshots.list", auth: true, handle: s.cinder(func(q *req) { s.listSnapshotsHTTP(q, false) })}
		case len(segs) == 2 && segs[1] == "detail" && get:
			return route{op: "volume.snapshots.list", auth: true, handle: s.cinder(func(q *req) { s.listSnapshotsHTTP(q, true) })}
		case len(segs) == 2 && get:
			return route{op: "volume.snapshots.get", auth: true, handle: s.cinder(func(q *req) { s.getSnapshotHTTP(q, segs[1]) })}
		case len(segs) == 2 && q.r.Method == http.MethodDelete:
			return route{op: "volume.snapshots.delete", auth: true, handle: s.cinder(func(q *req) { s.deleteSnapshotHTTP(q, segs[1]) })}
		}
	case "volumes":
		if get && len(segs) <= 2 {
			return route{op: "volume.volumes", auth: true, handle: s.cinder(s.volumesHTTP)}
		}
		if q.r.Method == http.MethodDelete && len(segs) == 2 {
			return route{op: "volume.volumes.delete", auth: true, handle: s.cinder(func(q *req) { s.deleteVolumeHTTP(q, segs[1]) })}
		}
	}
	return s.volumeOther()
}

func (s *Sim) volumeOther() route {
	return route{op: "volume.other", auth: true, handle: func(q *req) {
		s.opts.info("simcloud unknown volume path", "method", q.r.Method, "path", q.r.URL.RequestURI())
		cinderFault(q.w, http.StatusNotFound, "The resource could not be found.")
	}}
}

func (s *Sim) volumeVersions(q *req, code int) {
	writeJSON(q.w, code, map[string]any{"versions": []any{map[string]any{
		"id": "v3.0", "status": "CURRENT", "version": maxVolume.String(), "min_version": minVolume.String(),
		"updated": "2022-08-31T00:00:00Z",
		"links": []any{
			map[string]any{"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
			map[string]any{"rel": "self", "href": q.base + "/volume/v3/"},
		},
		"media-types": []any{map[string]any{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}},
	}}})
}

// cinder wraps a block-storage handler with Cinder's microversion negotiation
// (OpenStack-API-Version: volume 3.X; none means 3.0).
func (s *Sim) cinder(h func(*req)) func(*req) {
	return func(q *req) {
		v := minVolume
		for _, hv := range q.r.Header.Values("OpenStack-API-Version") {
			for _, part := range strings.Split(hv, ",") {
				f := strings.Fields(part)
				if len(f) != 2 || !strings.EqualFold(f[0], "volume") {
					continue
				}
				if strings.EqualFold(f[1], "latest") {
					v = maxVolume
					continue
				}
				pv, ok := parseVersion(f[1])
				if !ok || pv.less(minVolume) || maxVolume.less(pv) {
					q.w.Header().Set("OpenStack-API-Version", "volume "+minVolume.String())
					cinderFault(q.w, http.StatusNotAcceptable, fmt.Sprintf(
						"Version %s is not supported by the API. Minimum is %s and maximum is %s.", f[1], minVolume, maxVolume))
					return
				}
				v = pv
			}
		}
		q.mv = v
		q.w.Header().Set("OpenStack-API-Version", "volume "+v.String())
		q.w.Header().Add("Vary", "OpenStack-API-Version")
		h(q)
	}
}

// snapshotView is a snapshot as Cinder's API shows it; callers hold s.mu.
func (s *Sim) snapshotView(q *req, sn *snapshot) map[string]any {
	now := s.now()
	st := sn.statusAt(now)
	var desc any
	if sn.description != "" {
		desc = sn.description
	}
	progress := "0%"
	if st != "creating" {
		progress = "100%"
	}
	out := map[string]any{
		"id": sn.id, "created_at": timeCinder(sn.created), "updated_at": timeCinder(sn.updatedAt(now)),
		"name": sn.name, "description": desc, "volume_id": sn.volumeID, "status": st, "size": sn.size,
		"metadata": map[string]any{},
		"os-extended-snapshot-attributes:progress":   progress,
		"os-extended-snapshot-attributes:project_id": s.opts.ProjectID,
	}
	if q.mv.major == 3 && q.mv.minor >= 14 {
		out["group_snapshot_id"] = nil
	}
	if q.mv.major == 3 && q.mv.minor >= 41 {
		out["user_id"] = s.opts.UserID
	}
	if q.mv.major == 3 && q.mv.minor >= 65 {
		out["consumes_quota"] = true
	}
	return out
}

func (s *Sim) listSnapshotsHTTP(q *req, detail bool) {
	query := q.r.URL.Query()
	limit, marker, ok := pageParams(q, s.opts.MaxLimit, s.opts.MaxLimit)
	if !ok {
		cinderFault(q.w, http.StatusBadRequest, "limit param must be an integer")
		return
	}
	if limit == 0 {
		limit = s.opts.MaxLimit
	}
	allowed := map[string]bool{"name": true, "status": true, "volume_id": true, "metadata": true,
		"availability_zone": true, "all_tenants": true, "project_id": true}
	reserved := map[string]bool{"limit": true, "marker": true, "offset": true, "sort": true, "sort_key": true,
		"sort_dir": true, "with_count": true}
	if q.mv.minor >= 34 {
		var bad []string
		for k := range query {
			if !allowed[k] && !reserved[k] {
				bad = append(bad, k)
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			cinderFault(q.w, http.StatusBadRequest, "Invalid filters "+strings.Join(bad, ",")+" are found in query options.")
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	all := s.sortedSnapshots()
	after := func(a, b *snapshot) bool { // b after a: created_at desc, id desc
		if !a.created.Equal(b.created) {
			return b.created.Before(a.created)
		}
		return b.id < a.id
	}
	sort.SliceStable(all, func(i, j int) bool { return after(all[i], all[j]) })
	var markerSn *snapshot
	if marker != "" {
		if markerSn = s.snapshot(marker); markerSn == nil {
			cinderFault(q.w, http.StatusBadRequest, "Invalid input received: marker ["+marker+"] not found")
			return
		}
	}
	var page []*snapshot
	for _, sn := range all {
		if markerSn != nil && !after(markerSn, sn) {
			continue
		}
		if v := query.Get("status"); v != "" && v != sn.statusAt(now) {
			continue
		}
		if v := query.Get("name"); v != "" && v != sn.name {
			continue
		}
		if v := query.Get("volume_id"); v != "" && v != sn.volumeID {
			continue
		}
		if len(page) == limit {
			break
		}
		page = append(page, sn)
	}
	list := make([]any, 0, len(page))
	for _, sn := range page {
		v := s.snapshotView(q, sn)
		if !detail {
			delete(v, "os-extended-snapshot-attributes:progress")
			delete(v, "os-extended-snapshot-attributes:project_id")
		}
		list = append(list, v)
	}
	body := map[string]any{"snapshots": list}
	if len(page) > 0 && len(page) == limit {
		coll := "/snapshots"
		if detail {
			coll += "/detail"
		}
		body["snapshots_links"] = []any{map[string]any{"rel": "next",
			"href": q.base + "/volume/v3/" + s.opts.ProjectID + coll + "?" + nextQuery(q.r.URL.RawQuery, page[len(page)-1].id)}}
	}
	writeJSON(q.w, http.StatusOK, body)
}

func (s *Sim) getSnapshotHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.snapshot(id)
	if sn == nil {
		cinderFault(q.w, http.StatusNotFound, "Snapshot "+id+" could not be found.")
		return
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"snapshot": s.snapshotView(q, sn)})
}

// deleteSnapshotHTTP accepts a delete of an available or error snapshot (202,
// empty body); it then stays deleting for SnapshotDeleteTime and is gone, or
// goes back to available when a volume depends on it, as Cinder's manager does.
func (s *Sim) deleteSnapshotHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.snapshot(id)
	if sn == nil {
		cinderFault(q.w, http.StatusNotFound, "Snapshot "+id+" could not be found.")
		return
	}
	now := s.now()
	if st := sn.statusAt(now); st != "available" && st != "error" {
		cinderFault(q.w, http.StatusBadRequest,
			"Invalid snapshot: Volume Snapshot status must be available or error and must not be part of a group.")
		return
	}
	sn.status = sn.statusAt(now)
	sn.deleteAt = now.Add(s.opts.SnapshotDeleteTime)
	sn.updated = now
	// An empty 202 with webob's default Content-Type, as Cinder answers it.
	q.w.Header().Set("Content-Length", "0")
	q.w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	q.w.WriteHeader(http.StatusAccepted)
}

// volumesHTTP lists the servers' volumes, which python-openstackclient reads to
// name the volume of each snapshot.
func (s *Sim) volumesHTTP(q *req) {
	s.mu.Lock()
	defer s.mu.Unlock()
	type vol struct {
		id, server, device, status, name string
		snapshot                         any
		bootable                         bool
	}
	var vols []vol
	for _, sv := range s.sortedServers() {
		for i, v := range sv.volumes {
			if s.vols[v] != nil {
				continue // a restored volume: listed below
			}
			vols = append(vols, vol{id: v, server: sv.id, device: deviceName(sv.rootDevice, i), status: "in-use",
				name: fmt.Sprintf("vol-%s", v[:8]), bootable: i == 0})
		}
	}
	for _, v := range s.sortedVolumes() {
		// Nova names the volumes it makes from a mapping "" (the reference capture).
		vols = append(vols, vol{id: v.id, server: v.server, device: v.device, status: v.status(),
			snapshot: v.snapshotID, bootable: v.bootable})
	}
	view := func(v vol, _ int) map[string]any {
		att := []any{}
		if v.server != "" {
			att = append(att, map[string]any{"server_id": v.server, "volume_id": v.id, "id": v.id, "attachment_id": v.id, "device": v.device})
		}
		return map[string]any{
			"id": v.id, "name": v.name, "status": v.status, "size": 1,
			"availability_zone": "nova", "bootable": fmt.Sprint(v.bootable), "volume_type": "__DEFAULT__",
			"attachments": att,
			"metadata":    map[string]any{}, "description": nil, "multiattach": false, "encrypted": false,
			"created_at": "2024-01-01T00:00:00.000000", "updated_at": nil, "snapshot_id": v.snapshot, "source_volid": nil,
			"links": []any{},
		}
	}
	segs := q.segs
	if len(segs) == 2 && segs[1] != "detail" {
		for i, v := range vols {
			if v.id == segs[1] {
				writeJSON(q.w, http.StatusOK, map[string]any{"volume": view(v, i)})
				return
			}
		}
		cinderFault(q.w, http.StatusNotFound, "Volume "+segs[1]+" could not be found.")
		return
	}
	list := []any{}
	status := q.r.URL.Query().Get("status")
	for i, v := range vols {
		if status != "" && v.status != status {
			continue // Cinder filters the list on status (openstack volume list --status)
		}
		list = append(list, view(v, i))
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"volumes": list})
}
