package simcloud

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The control API under /_sim/ is not OpenStack: it lets a test or a person
// arrange and inspect the simulated cloud over HTTP. It needs no token.
//
//	GET    /_sim/state                      servers, images, snapshots, requests, now
//	GET    /_sim/servers | /_sim/images | /_sim/snapshots | /_sim/requests
//	POST   /_sim/servers                    ServerSpec -> {"id": ...}
//	PATCH  /_sim/servers/{id}               {"status", "task_state", "tags"} (each optional)
//	DELETE /_sim/servers/{id}
//	POST   /_sim/servers/{id}/fail-next-snapshot | stick-next-image | fail-next-volume-snapshot
//	POST   /_sim/servers/{id}/slow-next-image?by=30s   the next image-backed snapshot takes that much longer
//	POST   /_sim/images                     ImageState -> {"id": ...}
//	PATCH  /_sim/images/{id}                {"protected": bool}
//	DELETE /_sim/images/{id}                behind the client's back
//	POST   /_sim/snapshots/{id}/volumes     a volume now depends on the snapshot
//	DELETE /_sim/snapshots/{id}
//	POST   /_sim/faults                     fault -> {"id": N}; durations as "250ms" strings or nanoseconds
//	DELETE /_sim/faults/{id} | /_sim/faults
//	GET    /_sim/settings                   {"compute_project_id": bool}
//	PATCH  /_sim/settings                   {"compute_project_id": bool}: the catalog's compute
//	                                        endpoint for tokens issued from then on (with or
//	                                        without /{project_id})
//	POST   /_sim/expire-tokens
//	POST   /_sim/advance                    {"duration": "10s"}
//	GET    /_sim/clouds.yaml?name=simcloud

// faultWire is Fault with human durations.
type faultWire struct {
	Op                  string          `json:"op"`
	Latency             json.RawMessage `json:"latency"`
	ErrorRate           float64         `json:"error_rate"`
	ErrorStatus         int             `json:"error_status"`
	Status429RetryAfter json.RawMessage `json:"status_429_retry_after"`
	Hang                bool            `json:"hang"`
	Count               int             `json:"count"`
	After               bool            `json:"after"`
}

func parseDuration(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, err)
		}
		return d, nil
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("duration %s: want a string like \"2s\" or nanoseconds", raw)
	}
	return time.Duration(n), nil
}

func ctlError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func decodeCtl(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		ctlError(w, http.StatusBadRequest, "decode body: %v", err)
		return false
	}
	return true
}

func (s *Sim) serveControl(w http.ResponseWriter, r *http.Request) {
	segs := splitPath(strings.TrimPrefix(r.URL.Path, "/_sim"))
	m := r.Method
	noContent := func() { w.WriteHeader(http.StatusNoContent) }
	if len(segs) == 0 {
		ctlError(w, http.StatusNotFound, "see the simcloud package documentation for /_sim/ routes")
		return
	}
	switch {
	case segs[0] == "state" && m == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{
			"now": s.Now(), "servers": nonNil(s.Servers()), "images": nonNil(s.Images()),
			"snapshots": nonNil(s.Snapshots()), "volumes": nonNil(s.Volumes()), "requests": s.Requests()})
	case segs[0] == "requests" && m == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Requests())
	case segs[0] == "clouds.yaml" && m == http.MethodGet:
		name := r.URL.Query().Get("name")
		if name == "" {
			name = "simcloud"
		}
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(s.CloudsYAML(name))
	case segs[0] == "settings" && len(segs) == 1 && (m == http.MethodGet || m == http.MethodPatch):
		if m == http.MethodPatch {
			var body struct {
				ComputeProjectID *bool `json:"compute_project_id"`
			}
			if !decodeCtl(w, r, &body) {
				return
			}
			if body.ComputeProjectID != nil {
				s.SetComputeProjectID(*body.ComputeProjectID)
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"compute_project_id": s.ComputeProjectID()})
	case segs[0] == "expire-tokens" && m == http.MethodPost:
		s.ExpireTokens()
		noContent()
	case segs[0] == "advance" && m == http.MethodPost:
		var body struct {
			Duration json.RawMessage `json:"duration"`
		}
		if !decodeCtl(w, r, &body) {
			return
		}
		d, err := parseDuration(body.Duration)
		if err != nil || d < 0 {
			ctlError(w, http.StatusBadRequest, "advance: bad duration: %v", err)
			return
		}
		s.Advance(d)
		noContent()
	case segs[0] == "servers":
		s.controlServers(w, r, segs[1:])
	case segs[0] == "images":
		s.controlImages(w, r, segs[1:])
	case segs[0] == "snapshots":
		switch {
		case len(segs) == 1 && m == http.MethodGet:
			writeJSON(w, http.StatusOK, nonNil(s.Snapshots()))
		case len(segs) == 1 && m == http.MethodPost:
			var st SnapshotState
			if decodeCtl(w, r, &st) {
				writeJSON(w, http.StatusCreated, map[string]string{"id": s.PutSnapshot(st)})
			}
		case len(segs) == 2 && m == http.MethodDelete:
			if !s.DeleteSnapshotDirect(segs[1]) {
				ctlError(w, http.StatusNotFound, "no snapshot %s", segs[1])
				return
			}
			noContent()
		case len(segs) == 3 && segs[2] == "volumes" && m == http.MethodPost:
			if !s.AddVolumeFromSnapshot(segs[1]) {
				ctlError(w, http.StatusNotFound, "no snapshot %s", segs[1])
				return
			}
			noContent()
		default:
			ctlError(w, http.StatusNotFound, "unknown control route %s %s", m, r.URL.Path)
		}
	case segs[0] == "faults":
		switch {
		case len(segs) == 1 && m == http.MethodPost:
			var fw faultWire
			if !decodeCtl(w, r, &fw) {
				return
			}
			lat, err1 := parseDuration(fw.Latency)
			ra, err2 := parseDuration(fw.Status429RetryAfter)
			if err1 != nil || err2 != nil || fw.Op == "" {
				ctlError(w, http.StatusBadRequest, "fault: need op and valid durations (%v, %v)", err1, err2)
				return
			}
			id := s.SetFault(Fault{Op: fw.Op, Latency: lat, ErrorRate: fw.ErrorRate, ErrorStatus: fw.ErrorStatus,
				Status429RetryAfter: ra, Hang: fw.Hang, Count: fw.Count, After: fw.After})
			writeJSON(w, http.StatusCreated, map[string]int{"id": id})
		case len(segs) == 1 && m == http.MethodDelete:
			s.ClearFaults()
			noContent()
		case len(segs) == 2 && m == http.MethodDelete:
			id, err := strconv.Atoi(segs[1])
			if err != nil {
				ctlError(w, http.StatusBadRequest, "fault id %q: %v", segs[1], err)
				return
			}
			s.ClearFault(id)
			noContent()
		default:
			ctlError(w, http.StatusNotFound, "unknown control route %s %s", m, r.URL.Path)
		}
	default:
		ctlError(w, http.StatusNotFound, "unknown control route %s %s", m, r.URL.Path)
	}
}

func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}

func (s *Sim) controlServers(w http.ResponseWriter, r *http.Request, segs []string) {
	m := r.Method
	exists := func(id string) bool {
		_, ok := s.Server(id)
		if !ok {
			ctlError(w, http.StatusNotFound, "no server %s", id)
		}
		return ok
	}
	switch {
	case len(segs) == 0 && m == http.MethodGet:
		writeJSON(w, http.StatusOK, nonNil(s.Servers()))
	case len(segs) == 0 && m == http.MethodPost:
		var spec ServerSpec
		if decodeCtl(w, r, &spec) {
			writeJSON(w, http.StatusCreated, map[string]string{"id": s.AddServer(spec)})
		}
	case len(segs) == 1 && m == http.MethodGet:
		sv, ok := s.Server(segs[0])
		if !ok {
			ctlError(w, http.StatusNotFound, "no server %s", segs[0])
			return
		}
		writeJSON(w, http.StatusOK, sv)
	case len(segs) == 1 && m == http.MethodDelete:
		if exists(segs[0]) {
			s.RemoveServer(segs[0])
			w.WriteHeader(http.StatusNoContent)
		}
	case len(segs) == 1 && m == http.MethodPatch:
		var body struct {
			Status    *string   `json:"status"`
			TaskState *string   `json:"task_state"`
			Tags      *[]string `json:"tags"`
		}
		if !decodeCtl(w, r, &body) || !exists(segs[0]) {
			return
		}
		if body.Status != nil {
			s.SetServerStatus(segs[0], *body.Status)
		}
		if body.TaskState != nil {
			s.SetServerTaskState(segs[0], *body.TaskState)
		}
		if body.Tags != nil {
			s.SetServerTags(segs[0], *body.Tags)
		}
		sv, _ := s.Server(segs[0])
		writeJSON(w, http.StatusOK, sv)
	case len(segs) == 2 && m == http.MethodPost:
		if !exists(segs[0]) {
			return
		}
		switch segs[1] {
		case "fail-next-snapshot":
			s.FailNextSnapshot(segs[0])
		case "stick-next-image":
			s.StickNextImage(segs[0])
		case "slow-next-image":
			by, err := time.ParseDuration(r.URL.Query().Get("by"))
			if err != nil || by <= 0 {
				ctlError(w, http.StatusBadRequest, "slow-next-image needs ?by=DURATION (positive)")
				return
			}
			s.SlowNextImage(segs[0], by)
		case "fail-next-volume-snapshot":
			s.FailNextVolumeSnapshot(segs[0])
		default:
			ctlError(w, http.StatusNotFound, "unknown server control %s", segs[1])
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		ctlError(w, http.StatusNotFound, "unknown control route %s %s", m, r.URL.Path)
	}
}

func (s *Sim) controlImages(w http.ResponseWriter, r *http.Request, segs []string) {
	m := r.Method
	switch {
	case len(segs) == 0 && m == http.MethodGet:
		writeJSON(w, http.StatusOK, nonNil(s.Images()))
	case len(segs) == 0 && m == http.MethodPost:
		var st ImageState
		if decodeCtl(w, r, &st) {
			writeJSON(w, http.StatusCreated, map[string]string{"id": s.PutImage(st)})
		}
	case len(segs) == 1 && m == http.MethodGet:
		im, ok := s.Image(segs[0])
		if !ok {
			ctlError(w, http.StatusNotFound, "no image %s", segs[0])
			return
		}
		writeJSON(w, http.StatusOK, im)
	case len(segs) == 1 && m == http.MethodPatch:
		var body struct {
			Protected *bool `json:"protected"`
		}
		if !decodeCtl(w, r, &body) {
			return
		}
		if body.Protected == nil || !s.SetImageProtected(segs[0], *body.Protected) {
			ctlError(w, http.StatusNotFound, "no image %s (or no \"protected\" in the body)", segs[0])
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case len(segs) == 1 && m == http.MethodDelete:
		if !s.DeleteImageDirect(segs[0]) {
			ctlError(w, http.StatusNotFound, "no image %s", segs[0])
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		ctlError(w, http.StatusNotFound, "unknown control route %s %s", m, r.URL.Path)
	}
}
