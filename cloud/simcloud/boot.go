package simcloud

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// volume is a Cinder volume made from a snapshot by POST /servers (a restore of a
// volume-backed image). The volumes of AddServer's servers are not here: they are
// listed from their servers.
type volume struct {
	seq        int64
	id         string
	snapshotID string
	server     string // attached to; "" when available
	device     string
	size       int
	bootable   bool
	created    time.Time
	deleteAt   time.Time // zero unless deleting
}

// VolumeState is a volume made from a snapshot, as the simulator holds it.
type VolumeState struct {
	ID         string `json:"id"`
	SnapshotID string `json:"snapshot_id"`
	Status     string `json:"status"` // in-use, available, deleting
	ServerID   string `json:"server_id,omitempty"`
}

// uuidRe is the form Nova's schema demands of a network uuid.
var uuidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// peekAction returns the action named by a server action body (its first key)
// and leaves the body readable for the handler.
func peekAction(q *req) string {
	raw, err := io.ReadAll(io.LimitReader(q.r.Body, 1<<20))
	q.r.Body = io.NopCloser(bytes.NewReader(raw))
	if err != nil {
		return ""
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || len(m) != 1 {
		return ""
	}
	for k := range m {
		return k
	}
	return ""
}

// volume returns a restored volume as of now (a deleted one vanishes lazily and
// releases its snapshot); callers hold s.mu.
func (s *Sim) volume(id string) *volume {
	v := s.vols[id]
	if v == nil {
		return nil
	}
	if !v.deleteAt.IsZero() && !s.now().Before(v.deleteAt) {
		delete(s.vols, id)
		if sn := s.snapshots[v.snapshotID]; sn != nil && sn.dependents > 0 {
			sn.dependents--
		}
		return nil
	}
	return v
}

func (v *volume) status() string {
	switch {
	case !v.deleteAt.IsZero():
		return "deleting"
	case v.server != "":
		return "in-use"
	default:
		return "available"
	}
}

// bootRequest is what createServerHTTP takes from a valid POST /servers body.
type bootRequest struct {
	name, imageRef, flavorRef, az string
	metadata                      map[string]string
	snapshots                     []bdmSnapshot // from block_device_mapping_v2
}

type bdmSnapshot struct {
	snapshotID string
	bootIndex  int // -1 for none
	device     string
}

// parseBoot applies the parts of Nova's POST /servers schema a restore touches
// and returns Nova's message for the first error.
func parseBoot(q *req, body object) (bootRequest, string) {
	var br bootRequest
	field := func(path string, val any, msg string) string {
		return fmt.Sprintf("Invalid input for field/attribute %s. Value: %s. %s", path, pyStrValue(val), msg)
	}
	v, ok := body.get("server")
	srv, isObj := v.(object)
	if !ok || !isObj {
		return br, field("server", v, pyRepr(v)+" is not of type 'object'")
	}
	for _, req := range []string{"name", "flavorRef"} {
		if _, ok := srv.get(req); !ok {
			return br, field("server", srv, "'"+req+"' is a required property")
		}
	}
	if _, ok := srv.get("networks"); !ok && q.mv.atLeast(37) {
		return br, field("server", srv, "'networks' is a required property")
	}
	nameV, _ := srv.get("name")
	name, isStr := nameV.(string)
	switch {
	case !isStr:
		return br, field("name", nameV, pyRepr(nameV)+" is not of type 'string'")
	case len([]rune(name)) < 1:
		return br, field("name", nameV, pyRepr(nameV)+" is too short")
	case len([]rune(name)) > 255:
		return br, field("name", nameV, pyRepr(nameV)+" is too long")
	case !validName(name):
		return br, "An invalid 'name' value was provided. The name must be: printable characters. Can not start or end with whitespace."
	}
	br.name = name
	fv, _ := srv.get("flavorRef")
	switch f := fv.(type) {
	case string:
		br.flavorRef = f[strings.LastIndex(f, "/")+1:]
	case json.Number:
		br.flavorRef = f.String()
	default:
		return br, field("flavorRef", fv, pyRepr(fv)+" is not valid under any of the given schemas")
	}
	if iv, ok := srv.get("imageRef"); ok {
		img, isStr := iv.(string)
		if !isStr {
			return br, field("imageRef", iv, pyRepr(iv)+" is not of type 'string'")
		}
		br.imageRef = img[strings.LastIndex(img, "/")+1:]
	}
	if nv, ok := srv.get("networks"); ok {
		switch n := nv.(type) {
		case string:
			if n != "auto" && n != "none" {
				return br, field("networks", nv, pyRepr(nv)+" is not valid under any of the given schemas")
			}
		case []any:
			for _, e := range n {
				eo, _ := e.(object)
				u, _ := eo.get("uuid")
				us, _ := u.(string)
				if !uuidRe.MatchString(us) {
					return br, fmt.Sprintf("Bad networks format: network uuid is not in proper format (%s)", us)
				}
			}
		default:
			return br, field("networks", nv, pyRepr(nv)+" is not valid under any of the given schemas")
		}
	}
	if av, ok := srv.get("availability_zone"); ok {
		az, _ := av.(string)
		br.az = az
	}
	if md, ok := srv.get("metadata"); ok {
		mo, isObj := md.(object)
		if !isObj {
			return br, field("metadata", md, pyRepr(md)+" is not of type 'object'")
		}
		br.metadata = map[string]string{}
		for _, m := range mo {
			sv, isStr := m.val.(string)
			switch {
			case !metadataKeyRe.MatchString(m.key):
				return br, field("metadata", md, fmt.Sprintf("%s does not match any of the regexes: %s", pyStr(m.key), pyStr(metadataKeyRe.String())))
			case !isStr:
				return br, field(m.key, m.val, pyRepr(m.val)+" is not of type 'string'")
			case len([]rune(sv)) > 255:
				return br, field(m.key, m.val, pyRepr(m.val)+" is too long")
			}
			br.metadata[m.key] = sv
		}
	}
	if bv, ok := srv.get("block_device_mapping_v2"); ok {
		list, isList := bv.([]any)
		if !isList {
			return br, field("block_device_mapping_v2", bv, pyRepr(bv)+" is not of type 'array'")
		}
		for _, e := range list {
			eo, _ := e.(object)
			st, _ := eo.get("source_type")
			dt, _ := eo.get("destination_type")
			src, _ := st.(string)
			dst, _ := dt.(string)
			switch src {
			case "blank", "image", "snapshot", "volume":
			default:
				return br, field("source_type", st, pyRepr(st)+" is not one of ['volume', 'image', 'snapshot', 'blank']")
			}
			if dst != "" && dst != "local" && dst != "volume" {
				return br, field("destination_type", dt, pyRepr(dt)+" is not one of ['local', 'volume']")
			}
			if src != "snapshot" {
				// Only snapshot sources are modelled: a restore boots from them.
				return br, "Block Device Mapping is Invalid: the simulator only boots snapshot sources."
			}
			if dst != "volume" {
				return br, "Block Device Mapping is Invalid: Mapping image to local is not supported."
			}
			uv, _ := eo.get("uuid")
			u, _ := uv.(string)
			bi := -1
			if b, ok := eo.get("boot_index"); ok {
				if n, isNum := b.(json.Number); isNum {
					i, _ := strconv.Atoi(n.String())
					bi = i
				}
			}
			dn, _ := eo.get("device_name")
			dev, _ := dn.(string)
			br.snapshots = append(br.snapshots, bdmSnapshot{snapshotID: u, bootIndex: bi, device: dev})
		}
	}
	hasBoot := false
	for _, b := range br.snapshots {
		hasBoot = hasBoot || b.bootIndex == 0
	}
	if br.imageRef == "" && !hasBoot {
		return br, "Block Device Mapping is Invalid: Boot sequence for the instance and image/block device mapping combination is not valid."
	}
	return br, ""
}

// imageSnapshots reads a volume-backed image's block_device_mapping property (a
// JSON string) into its snapshot entries, as Nova's _get_image_defined_bdms does.
func imageSnapshots(props map[string]string) []bdmSnapshot {
	raw, ok := props["block_device_mapping"]
	if !ok {
		return nil
	}
	var list []map[string]any
	if json.Unmarshal([]byte(raw), &list) != nil {
		return nil
	}
	var out []bdmSnapshot
	for _, e := range list {
		id, _ := e["snapshot_id"].(string)
		if id == "" {
			continue
		}
		bi := -1
		if f, ok := e["boot_index"].(float64); ok {
			bi = int(f)
		}
		dev, _ := e["device_name"].(string)
		out = append(out, bdmSnapshot{snapshotID: id, bootIndex: bi, device: dev})
	}
	return out
}

// createServerHTTP is POST /servers. Both kinds of our images boot from imageRef:
// for a volume-backed image Nova merges the image's block_device_mapping into the
// request (nova/compute/api.py _check_and_transform_bdm), so each snapshot it
// names becomes a new volume (delete_on_termination false, as the mapping says).
// block_device_mapping_v2 with snapshot sources (openstack server create
// --snapshot) is accepted too.
func (s *Sim) createServerHTTP(q *req) {
	body, ok := s.readNovaObject(q)
	if !ok {
		return
	}
	br, msg := parseBoot(q, body)
	if msg != "" {
		s.novaFault(q, http.StatusBadRequest, msg, nil)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if flavorByID(br.flavorRef) == nil {
		s.novaFault(q, http.StatusBadRequest, "Flavor "+br.flavorRef+" could not be found.", nil)
		return
	}
	snaps := br.snapshots
	if br.imageRef != "" {
		im := s.image(br.imageRef)
		switch {
		case im == nil:
			s.novaFault(q, http.StatusBadRequest, "Image "+br.imageRef+" could not be found.", nil)
			return
		case im.statusAt(s.now()) != "active":
			s.novaFault(q, http.StatusBadRequest, "Image "+br.imageRef+" is not active.", nil)
			return
		}
		if img := imageSnapshots(im.props); len(img) > 0 {
			snaps = append(img, snaps...)
		}
	}
	for _, b := range snaps {
		if s.snapshot(b.snapshotID) == nil {
			s.novaFault(q, http.StatusBadRequest, "Snapshot "+b.snapshotID+" could not be found.", nil)
			return
		}
	}
	if br.az != "" && !s.knownZone(br.az) {
		s.novaFault(q, http.StatusBadRequest, "The requested availability zone is not available", nil)
		return
	}
	if n := len(s.servers); s.opts.InstanceQuota > 0 && n >= s.opts.InstanceQuota {
		s.novaFault(q, http.StatusForbidden, fmt.Sprintf(
			"Quota exceeded for instances: Requested 1, but already used %d of %d instances", n, s.opts.InstanceQuota), nil)
		return
	}
	now := s.now()
	sv := &server{
		seq: s.nextSeq(), id: s.newID(), name: br.name, status: "BUILD", az: br.az, taskState: "spawning",
		metadata: br.metadata, imageRef: br.imageRef, rootDevice: DefaultRootDevice, created: now,
		flavorID: br.flavorRef, buildUntil: now.Add(s.opts.BootTime), buildFault: s.bootFail,
	}
	s.bootFail = ""
	if sv.az == "" {
		sv.az = "nova"
	}
	for _, b := range snaps {
		sn := s.snapshot(b.snapshotID)
		if sn.statusAt(now) != "available" {
			// Cinder refuses a volume from a snapshot that is not available; the
			// build fails in the compute service, after the 202.
			if sv.buildFault == "" {
				sv.buildFault = "Build of instance " + sv.id + " aborted: Failure prepping block device."
			}
			continue
		}
		vol := &volume{seq: s.nextSeq(), id: s.newID(), snapshotID: sn.id, server: sv.id, device: b.device,
			size: sn.size, bootable: b.bootIndex == 0, created: now}
		if vol.device == "" {
			vol.device = deviceName(sv.rootDevice, len(sv.volumes))
		}
		sn.dependents++
		s.vols[vol.id] = vol
		sv.volumes = append(sv.volumes, vol.id)
	}
	s.servers[sv.id] = sv
	pass := strings.ReplaceAll(s.newID(), "-", "")[:12]
	q.w.Header().Set("Location", s.computePrefix(q, false)+"/servers/"+sv.id)
	out := map[string]any{"server": map[string]any{
		"id": sv.id, "links": s.serverLinks(q, sv.id), "OS-DCF:diskConfig": "MANUAL",
		"security_groups": []any{map[string]any{"name": "default"}}, "adminPass": pass,
	}}
	writeJSON(q.w, http.StatusAccepted, out)
}

// knownZone reports whether some server is in zone az ("nova" always is);
// callers hold s.mu.
func (s *Sim) knownZone(az string) bool {
	if az == "nova" {
		return true
	}
	for _, sv := range s.servers {
		if sv.az == az {
			return true
		}
	}
	return false
}

// deleteServerHTTP is DELETE /servers/{id}: 204 with an empty JSON-typed body.
// The server is gone at once (a real Nova shows it deleting for a moment); the
// volumes made from snapshots are detached and stay, available.
func (s *Sim) deleteServerHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.server(id)
	if sv == nil {
		s.instanceNotFound(q, id)
		return
	}
	for _, vid := range sv.volumes {
		if v := s.vols[vid]; v != nil {
			v.server = ""
		}
	}
	delete(s.servers, id)
	q.w.Header().Set("Content-Type", "application/json")
	q.w.Header().Set("Content-Length", "0")
	q.w.WriteHeader(http.StatusNoContent)
}

// consoleLog is what a booted cirros prints.
var consoleLog = []string{
	"[    0.000000] Linux version 5.15.0-71-generic (buildd@lcy02-amd64-044) #78-Ubuntu SMP",
	"[    0.000000] Command line: LABEL=cirros-rootfs ro console=tty1 console=ttyS0",
	"[    1.274716] Run /init as init process",
	"Starting network: udhcpc: started, v1.29.3",
	"=== cirros: current=0.6.2 uptime=5.31 ===",
	"",
	"login as 'cirros' user. default password: 'gocubsgo'. use 'sudo' for root.",
	"simcloud login: ",
}

// consoleOutputHTTP is the os-getConsoleOutput action: {"output": "..."}; the
// last length lines when length is given. A building server has no console yet
// (409), a server in ERROR only the first line.
func (s *Sim) consoleOutputHTTP(q *req, id string) {
	raw, err := readBody(q)
	if err != nil {
		s.novaFault(q, http.StatusBadRequest, "Malformed request body", nil)
		return
	}
	var body struct {
		Console struct {
			Length any `json:"length"`
		} `json:"os-getConsoleOutput"`
	}
	if json.Unmarshal(raw, &body) != nil {
		s.novaFault(q, http.StatusBadRequest, "Malformed request body", nil)
		return
	}
	length := -1
	switch l := body.Console.Length.(type) {
	case nil:
	case float64:
		length = int(l)
	case string:
		n, err := strconv.Atoi(l)
		if err != nil {
			s.novaFault(q, http.StatusBadRequest, fmt.Sprintf(
				"Invalid input for field/attribute length. Value: %s. '%s' does not match '^-?[0-9]+$'", l, l), nil)
			return
		}
		length = n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.server(id)
	if sv == nil {
		s.instanceNotFound(q, id)
		return
	}
	if sv.status == "BUILD" {
		s.novaFault(q, http.StatusConflict, "Instance "+id+" is not ready.", nil)
		return
	}
	lines := consoleLog
	if sv.status == "ERROR" {
		lines = lines[:1]
	}
	if length >= 0 && length < len(lines) {
		lines = lines[len(lines)-length:]
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"output": strings.Join(lines, "\n")})
}

// deleteVolumeHTTP is DELETE /volumes/{id}: 202 with an empty body for an
// available volume, which is then deleting and gone after SnapshotDeleteTime;
// Cinder's 400 for an attached one.
func (s *Sim) deleteVolumeHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.volume(id)
	if v == nil {
		if s.serverVolume(id) {
			cinderFault(q.w, http.StatusBadRequest, volumeInUseMessage)
			return
		}
		cinderFault(q.w, http.StatusNotFound, "Volume "+id+" could not be found.")
		return
	}
	if v.status() != "available" {
		cinderFault(q.w, http.StatusBadRequest, volumeInUseMessage)
		return
	}
	v.deleteAt = s.now().Add(s.opts.SnapshotDeleteTime)
	q.w.Header().Set("Content-Length", "0")
	q.w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	q.w.WriteHeader(http.StatusAccepted)
}

// serverVolume reports whether id is a volume of an AddServer server (always
// attached); callers hold s.mu.
func (s *Sim) serverVolume(id string) bool {
	for _, sv := range s.servers {
		for _, v := range sv.volumes {
			if v == id && s.vols[id] == nil {
				return true
			}
		}
	}
	return false
}

// volumeInUseMessage is Cinder's answer to deleting an attached volume.
const volumeInUseMessage = "Invalid volume: Volume status must be available or error or error_restoring or " +
	"error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots, " +
	"awaiting a transfer, or be disassociated from snapshots after volume transfer."

// FailNextBoot makes the next server made with POST /servers end in ERROR with
// Nova's fault message reason (after its build time).
func (s *Sim) FailNextBoot(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bootFail = reason
}

// SetInstanceQuota limits the project to n servers (0: unlimited).
func (s *Sim) SetInstanceQuota(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.InstanceQuota = n
}

// Volumes returns the volumes made from snapshots (restores), deleting ones
// included, oldest first.
func (s *Sim) Volumes() []VolumeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []VolumeState
	for _, v := range s.sortedVolumes() {
		out = append(out, VolumeState{ID: v.id, SnapshotID: v.snapshotID, Status: v.status(), ServerID: v.server})
	}
	return out
}

// sortedVolumes lists the live restored volumes by age; callers hold s.mu.
func (s *Sim) sortedVolumes() []*volume {
	var out []*volume
	for id := range s.vols {
		if v := s.volume(id); v != nil {
			out = append(out, v)
		}
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].seq < out[j-1].seq; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
