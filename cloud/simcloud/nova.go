package simcloud

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// version is a compute microversion, 2.X.
type version struct{ major, minor int }

func parseVersion(s string) (version, bool) {
	maj, min, ok := strings.Cut(strings.TrimSpace(s), ".")
	if !ok {
		return version{}, false
	}
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil || a < 0 || b < 0 {
		return version{}, false
	}
	return version{a, b}, true
}

func (v version) String() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

func (v version) less(o version) bool {
	return v.major < o.major || (v.major == o.major && v.minor < o.minor)
}

// atLeast reports whether v >= 2.minor.
func (v version) atLeast(minor int) bool { return !v.less(version{2, minor}) }

var minCompute = version{2, 1}

func (s *Sim) maxCompute() version {
	v, ok := parseVersion(s.opts.ComputeVersion)
	if !ok {
		v, _ = parseVersion(DefaultComputeVersion)
	}
	return v
}

// Nova's snapshot task states refuse another createImage; these vm_states allow one.
var snapshotVMStates = map[string]bool{"active": true, "stopped": true, "paused": true, "suspended": true}

func (s *Sim) routeCompute(q *req) route {
	segs := q.segs
	get := q.r.Method == http.MethodGet
	if len(segs) == 0 {
		if get {
			return route{op: "compute.versions", handle: s.computeVersions}
		}
		return s.computeOther()
	}
	if segs[0] != "v2.1" {
		return s.computeOther()
	}
	segs = segs[1:]
	if len(segs) > 0 && segs[0] == s.opts.ProjectID {
		segs = segs[1:]
		q.projectInPath = true
	}
	q.segs = segs
	if len(segs) == 0 {
		if get {
			// The v2.1 document is a microversioned resource: it carries the
			// version headers (compute 2.1 when none was asked for); the root
			// version list above does not.
			return route{op: "compute.versions", handle: s.nova(s.computeVersion)}
		}
		return s.computeOther()
	}
	switch segs[0] {
	case "servers":
		switch {
		case len(segs) == 1 && get:
			return route{op: "compute.servers.list", auth: true, handle: s.nova(func(q *req) { s.listServersHTTP(q, false) })}
		case len(segs) == 2 && segs[1] == "detail" && get:
			return route{op: "compute.servers.list", auth: true, handle: s.nova(func(q *req) { s.listServersHTTP(q, true) })}
		case len(segs) == 2 && get:
			return route{op: "compute.servers.get", auth: true, handle: s.nova(func(q *req) { s.getServerHTTP(q, segs[1]) })}
		case len(segs) == 3 && segs[2] == "tags" && get:
			return route{op: "compute.servers.tags", auth: true, handle: s.nova(func(q *req) { s.serverTagsHTTP(q, segs[1]) })}
		case len(segs) == 1 && q.r.Method == http.MethodPost:
			return route{op: "compute.servers.create", auth: true, handle: s.nova(s.createServerHTTP)}
		case len(segs) == 2 && q.r.Method == http.MethodDelete:
			return route{op: "compute.servers.delete", auth: true, handle: s.nova(func(q *req) { s.deleteServerHTTP(q, segs[1]) })}
		case len(segs) == 3 && segs[2] == "action" && q.r.Method == http.MethodPost:
			if peekAction(q) == "os-getConsoleOutput" {
				return route{op: "compute.servers.console", auth: true, handle: s.nova(func(q *req) { s.consoleOutputHTTP(q, segs[1]) })}
			}
			return route{op: "compute.createImage", id: segs[1], auth: true, handle: s.nova(func(q *req) { s.serverAction(q, segs[1]) })}
		}
	case "flavors":
		if get {
			return route{op: "compute.flavors", auth: true, handle: s.nova(s.flavorsHTTP)}
		}
	}
	return s.computeOther()
}

func (s *Sim) computeOther() route {
	return route{op: "compute.other", auth: true, handle: s.nova(func(q *req) {
		s.opts.info("simcloud unknown compute path", "method", q.r.Method, "path", q.r.URL.RequestURI())
		s.novaFault(q, http.StatusNotFound, "The resource could not be found.", nil)
	})}
}

// nova wraps a compute API handler with microversion negotiation and the version
// headers Nova puts on every API response, faults included.
func (s *Sim) nova(h func(*req)) func(*req) {
	return func(q *req) {
		v, code, msg := s.negotiate(q.r)
		if code != 0 {
			writeJSONCT(q.w, code, "application/json; charset=UTF-8", map[string]any{
				faultName(code): map[string]any{"code": code, "message": msg}})
			return
		}
		q.mv = v
		hd := q.w.Header()
		hd.Set("Openstack-Api-Version", "compute "+v.String())
		hd.Set("X-Openstack-Nova-Api-Version", v.String())
		hd.Add("Vary", "OpenStack-API-Version")
		hd.Add("Vary", "X-OpenStack-Nova-API-Version")
		h(q)
	}
}

// negotiate reads the requested microversion as Nova does: OpenStack-API-Version
// "compute X" first, then X-OpenStack-Nova-API-Version; none means 2.1.
func (s *Sim) negotiate(r *http.Request) (version, int, string) {
	raw := ""
	for _, hv := range r.Header.Values("OpenStack-API-Version") {
		for _, part := range strings.Split(hv, ",") {
			f := strings.Fields(part)
			if len(f) == 2 && strings.EqualFold(f[0], "compute") {
				raw = f[1]
			}
		}
	}
	if raw == "" {
		raw = strings.TrimSpace(r.Header.Get("X-OpenStack-Nova-API-Version"))
	}
	max := s.maxCompute()
	if raw == "" {
		return minCompute, 0, ""
	}
	if strings.EqualFold(raw, "latest") {
		return max, 0, ""
	}
	v, ok := parseVersion(raw)
	if !ok {
		return version{}, http.StatusBadRequest,
			fmt.Sprintf("API Version String %s is of invalid format. Must be of format MajorNum.MinorNum.", raw)
	}
	if v.less(minCompute) || max.less(v) {
		return version{}, http.StatusNotAcceptable,
			fmt.Sprintf("Version %s is not supported by the API. Minimum is %s and maximum is %s.", v, minCompute, max)
	}
	return v, 0, ""
}

func (s *Sim) novaFault(q *req, code int, msg string, extra map[string]any) {
	inner := map[string]any{"code": code, "message": msg}
	for k, v := range extra {
		inner[k] = v
	}
	writeJSONCT(q.w, code, "application/json; charset=UTF-8", map[string]any{faultName(code): inner})
}

func (s *Sim) versionEntry(q *req) map[string]any {
	return map[string]any{
		"id": "v2.1", "status": "CURRENT", "version": s.maxCompute().String(), "min_version": minCompute.String(),
		"updated": "2013-07-23T11:33:21Z",
		"links": []any{
			map[string]any{"rel": "self", "href": q.base + "/compute/v2.1/"},
			map[string]any{"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
		},
		"media-types": []any{map[string]any{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}},
	}
}

func (s *Sim) computeVersions(q *req) {
	writeJSON(q.w, http.StatusOK, map[string]any{"versions": []any{
		map[string]any{"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
			"updated": "2011-01-21T11:33:21Z",
			"links":   []any{map[string]any{"rel": "self", "href": q.base + "/compute/v2/"}}},
		s.versionEntry(q),
	}})
}

func (s *Sim) computeVersion(q *req) {
	writeJSON(q.w, http.StatusOK, map[string]any{"version": s.versionEntry(q)})
}

// computePrefix is the URL prefix links use: with the project id when the request
// had it, as Nova's link builder does.
func (s *Sim) computePrefix(q *req, bookmark bool) string {
	p := q.base + "/compute"
	if !bookmark {
		p += "/v2.1"
	}
	if q.projectInPath {
		p += "/" + s.opts.ProjectID
	}
	return p
}

func (s *Sim) listServersHTTP(q *req, detail bool) {
	query := q.r.URL.Query()
	limit, marker, ok := pageParams(q, s.opts.MaxLimit, s.opts.MaxLimit)
	if !ok {
		s.novaFault(q, http.StatusBadRequest, "Invalid input for query parameters limit. Value: "+query.Get("limit")+". '"+query.Get("limit")+"' does not match '^[0-9]*$'", nil)
		return
	}
	if limit == 0 {
		limit = s.opts.MaxLimit
	}
	multi := func(k string) ([]string, bool) {
		vals, ok := query[k]
		if !ok {
			return nil, false
		}
		var out []string
		for _, v := range vals {
			for _, t := range strings.Split(v, ",") {
				if t = strings.TrimSpace(t); t != "" {
					out = append(out, t)
				}
			}
		}
		return out, true
	}
	var nameRe *regexp.Regexp
	if n := query.Get("name"); n != "" {
		var err error
		if nameRe, err = regexp.Compile(n); err != nil {
			nameRe = regexp.MustCompile(regexp.QuoteMeta(n))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	all := s.sortedServers()
	// Nova sorts by created_at desc, then id desc.
	sort.SliceStable(all, func(i, j int) bool { return serverAfter(all[i], all[j]) })
	var markerSrv *server
	if marker != "" {
		markerSrv = s.servers[marker]
		if markerSrv == nil {
			s.novaFault(q, http.StatusBadRequest, "marker ["+marker+"] not found", nil)
			return
		}
	}
	var page []*server
	for _, sv := range all {
		if markerSrv != nil && !serverAfter(markerSrv, sv) {
			continue
		}
		// Tag filters exist from 2.26; below, Nova drops them without a word.
		if q.mv.atLeast(26) {
			if tags, ok := multi("tags"); ok && !hasAll(sv.tags, tags) {
				continue
			}
			if tags, ok := multi("tags-any"); ok && !hasAny(sv.tags, tags) {
				continue
			}
			if tags, ok := multi("not-tags"); ok && hasAll(sv.tags, tags) {
				continue
			}
			if tags, ok := multi("not-tags-any"); ok && hasAny(sv.tags, tags) {
				continue
			}
		}
		if st := query.Get("status"); st != "" && !strings.EqualFold(st, sv.status) {
			continue
		}
		if nameRe != nil && !nameRe.MatchString(sv.name) {
			continue
		}
		if az := query.Get("availability_zone"); az != "" && q.mv.atLeast(83) && az != sv.az {
			continue
		}
		page = append(page, sv)
		if len(page) == limit {
			break
		}
	}
	list := make([]any, 0, len(page))
	for _, sv := range page {
		if detail {
			list = append(list, s.serverView(q, sv))
		} else {
			list = append(list, map[string]any{"id": sv.id, "name": sv.name, "links": s.serverLinks(q, sv.id)})
		}
	}
	body := map[string]any{"servers": list}
	// Like Nova: a full page gets a next link, even when nothing follows.
	if len(page) > 0 && len(page) == limit {
		coll := "/servers"
		if detail {
			coll += "/detail"
		}
		body["servers_links"] = []any{map[string]any{"rel": "next",
			"href": s.computePrefix(q, false) + coll + "?" + nextQuery(q.r.URL.RawQuery, page[len(page)-1].id)}}
	}
	writeJSON(q.w, http.StatusOK, body)
}

// serverAfter reports whether b comes after a in Nova's default order
// (created_at desc, id desc).
func serverAfter(a, b *server) bool {
	if !a.created.Equal(b.created) {
		return b.created.Before(a.created)
	}
	return b.id < a.id
}

// nextQuery is the query of a next link: the request's parameters in their order
// without marker, then marker=m, each key and value re-encoded the way Python's
// urlencode (quote_plus) does it, as Nova, Glance and Cinder build their links:
// a comma becomes %2C and "=" %3D (tags-any=a%2Cb%3Dc).
func nextQuery(raw, m string) string {
	parts := pyQueryPairs(raw)
	return strings.Join(append(parts, "marker="+url.QueryEscape(m)), "&")
}

// pyQueryPairs decodes a raw query and re-encodes each pair with quote_plus,
// dropping marker.
func pyQueryPairs(raw string) []string {
	var parts []string
	for _, p := range strings.Split(raw, "&") {
		if p == "" {
			continue
		}
		k, v, _ := strings.Cut(p, "=")
		ku, err1 := url.QueryUnescape(k)
		vu, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			ku, vu = k, v
		}
		if ku == "marker" {
			continue
		}
		// url.QueryEscape keeps exactly quote_plus's safe set (letters, digits,
		// "-", "_", ".", "~") and turns a space into "+".
		parts = append(parts, url.QueryEscape(ku)+"="+url.QueryEscape(vu))
	}
	return parts
}

func hasAll(have, want []string) bool {
	for _, w := range want {
		if !contains(have, w) {
			return false
		}
	}
	return true
}

func hasAny(have, want []string) bool {
	for _, w := range want {
		if contains(have, w) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

func (s *Sim) serverLinks(q *req, id string) []any {
	return []any{
		map[string]any{"rel": "self", "href": s.computePrefix(q, false) + "/servers/" + id},
		map[string]any{"rel": "bookmark", "href": s.computePrefix(q, true) + "/servers/" + id},
	}
}

func powerState(status string) int {
	switch status {
	case "ACTIVE":
		return 1
	case "PAUSED":
		return 3
	case "SHUTOFF", "SHELVED":
		return 4
	case "SUSPENDED":
		return 7
	}
	return 0
}

// simFlavor is one flavor of the simulated cloud.
type simFlavor struct {
	id, name         string
	vcpus, ram, disk int
}

// simFlavors are devstack's first public flavors.
var simFlavors = []simFlavor{
	{"1", "m1.tiny", 1, 512, 1},
	{"2", "m1.small", 1, 2048, 20},
	{"3", "m1.medium", 2, 4096, 40},
}

// flavorByID finds a flavor by id, as flavorRef and GET /flavors/{id} do.
func flavorByID(id string) *simFlavor {
	for i := range simFlavors {
		if simFlavors[i].id == id {
			return &simFlavors[i]
		}
	}
	return nil
}

// flavorByRef finds a flavor by id or, for the embedded view, by name.
func flavorByRef(ref string) *simFlavor {
	if f := flavorByID(ref); f != nil {
		return f
	}
	for i := range simFlavors {
		if simFlavors[i].name == ref {
			return &simFlavors[i]
		}
	}
	return nil
}

func flavorView(q *req, s *Sim, embedded bool, id string) map[string]any {
	f := flavorByRef(id)
	if f == nil {
		f = &simFlavors[0]
	}
	if embedded {
		return map[string]any{"vcpus": f.vcpus, "ram": f.ram, "disk": f.disk, "ephemeral": 0, "swap": 0,
			"original_name": f.name, "extra_specs": map[string]any{}}
	}
	return map[string]any{"id": f.id, "links": []any{map[string]any{"rel": "bookmark",
		"href": s.computePrefix(q, true) + "/flavors/" + f.id}}}
}

// serverView is a server as GET /servers/{id} and /servers/detail show it at the
// request's microversion. Callers hold s.mu.
func (s *Sim) serverView(q *req, sv *server) map[string]any {
	now := s.now()
	sv.refresh(now)
	var task any
	if sv.taskState != "" {
		task = sv.taskState
	}
	var img any = ""
	if sv.imageRef != "" {
		img = map[string]any{"id": sv.imageRef, "links": []any{map[string]any{"rel": "bookmark",
			"href": s.computePrefix(q, true) + "/images/" + sv.imageRef}}}
	}
	vols := []any{}
	for _, v := range sv.volumes {
		e := map[string]any{"id": v}
		if q.mv.atLeast(3) {
			e["delete_on_termination"] = false
		}
		vols = append(vols, e)
	}
	md := sv.metadata
	if md == nil {
		md = map[string]string{}
	}
	out := map[string]any{
		"id": sv.id, "name": sv.name, "status": sv.status,
		"tenant_id": s.opts.ProjectID, "user_id": s.opts.UserID,
		"metadata": md, "hostId": "0c4f5d1e0a3b6e8e7c1d2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e",
		"image": img, "flavor": flavorView(q, s, q.mv.atLeast(47), sv.flavorID),
		"created": timeNova(sv.created), "updated": timeNova(sv.created),
		"addresses": map[string]any{}, "accessIPv4": "", "accessIPv6": "",
		"links":             s.serverLinks(q, sv.id),
		"OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": sv.az,
		"config_drive": "", "key_name": nil,
		"OS-SRV-USG:launched_at":               sv.created.UTC().Format("2006-01-02T15:04:05.000000"),
		"OS-SRV-USG:terminated_at":             nil,
		"OS-EXT-STS:task_state":                task,
		"OS-EXT-STS:vm_state":                  vmStateOf(sv.status),
		"OS-EXT-STS:power_state":               powerState(sv.status),
		"os-extended-volumes:volumes_attached": vols,
		// No security_groups key: the simulated servers have no networks, and
		// Nova shows the key only for a server with ports.
		// The simulated user is an admin, who sees the extended attributes.
		"OS-EXT-SRV-ATTR:host":                computeHost,
		"OS-EXT-SRV-ATTR:hypervisor_hostname": computeHost,
		"OS-EXT-SRV-ATTR:instance_name":       fmt.Sprintf("instance-%08x", sv.seq),
	}
	if sv.status == "SHELVED_OFFLOADED" {
		out["OS-EXT-SRV-ATTR:host"], out["OS-EXT-SRV-ATTR:hypervisor_hostname"] = nil, nil
	}
	if q.mv.atLeast(3) {
		out["OS-EXT-SRV-ATTR:reservation_id"] = fmt.Sprintf("r-%08x", sv.seq)
		out["OS-EXT-SRV-ATTR:launch_index"] = 0
		out["OS-EXT-SRV-ATTR:kernel_id"] = ""
		out["OS-EXT-SRV-ATTR:ramdisk_id"] = ""
		out["OS-EXT-SRV-ATTR:hostname"] = sanitizeHostname(sv.name)
		out["OS-EXT-SRV-ATTR:root_device_name"] = sv.rootDevice
		out["OS-EXT-SRV-ATTR:user_data"] = nil
	}
	if q.mv.atLeast(16) {
		hs := "UP"
		if out["OS-EXT-SRV-ATTR:host"] == nil {
			hs = ""
		}
		out["host_status"] = hs
	}
	switch sv.status {
	case "ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING":
		out["progress"] = 0
	}
	if sv.status == "ERROR" {
		msg := sv.fault
		if msg == "" {
			msg = "Build of instance " + sv.id + " aborted: simulated failure"
		}
		out["fault"] = map[string]any{"code": 500, "created": timeNova(sv.created), "message": msg}
	}
	if q.mv.atLeast(9) {
		out["locked"] = sv.locked
	}
	if q.mv.atLeast(19) {
		out["description"] = nil
	}
	if q.mv.atLeast(26) {
		out["tags"] = append([]string{}, sv.tags...)
	}
	if q.mv.atLeast(63) {
		out["trusted_image_certificates"] = nil
	}
	if q.mv.atLeast(71) {
		out["server_groups"] = []any{}
	}
	if q.mv.atLeast(73) {
		out["locked_reason"] = nil
	}
	return out
}

// computeHost is the one nova-compute host of the simulated cloud.
const computeHost = "simcloud-compute-1"

// sanitizeHostname is Nova's sanitize_hostname: lower case, spaces and
// underscores to "-", other characters outside [a-z0-9.-] dropped, no leading
// or trailing "." or "-".
func sanitizeHostname(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r == ' ' || r == '_':
			b.WriteByte('-')
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			b.WriteRune(r)
		}
	}
	h := strings.Trim(b.String(), ".-")
	if h == "" {
		return "server"
	}
	return h
}

func (s *Sim) instanceNotFound(q *req, id string) {
	s.novaFault(q, http.StatusNotFound, "Instance "+id+" could not be found.", nil)
}

func (s *Sim) getServerHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.server(id)
	if sv == nil {
		s.instanceNotFound(q, id)
		return
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"server": s.serverView(q, sv)})
}

func (s *Sim) serverTagsHTTP(q *req, id string) {
	if !q.mv.atLeast(26) {
		s.novaFault(q, http.StatusNotFound, "The resource could not be found.", nil)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.server(id)
	if sv == nil {
		s.instanceNotFound(q, id)
		return
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"tags": append([]string{}, sv.tags...)})
}

func (s *Sim) flavorsHTTP(q *req) {
	segs := q.segs
	full := func(f simFlavor) map[string]any {
		out := map[string]any{
			"id": f.id, "name": f.name, "ram": f.ram, "vcpus": f.vcpus, "disk": f.disk, "OS-FLV-EXT-DATA:ephemeral": 0,
			"swap": "", "rxtx_factor": 1.0, "os-flavor-access:is_public": true, "OS-FLV-DISABLED:disabled": false,
			"links": []any{map[string]any{"rel": "self", "href": s.computePrefix(q, false) + "/flavors/" + f.id}},
		}
		if q.mv.atLeast(55) {
			out["description"] = nil
		}
		return out
	}
	switch {
	case len(segs) == 1:
		list := []any{}
		for _, f := range simFlavors {
			v := full(f)
			list = append(list, map[string]any{"id": f.id, "name": f.name, "links": v["links"]})
		}
		writeJSON(q.w, http.StatusOK, map[string]any{"flavors": list})
	case len(segs) == 2 && segs[1] == "detail":
		list := []any{}
		for _, f := range simFlavors {
			list = append(list, full(f))
		}
		writeJSON(q.w, http.StatusOK, map[string]any{"flavors": list})
	case len(segs) == 2 && flavorByID(segs[1]) != nil:
		writeJSON(q.w, http.StatusOK, map[string]any{"flavor": full(*flavorByID(segs[1]))})
	default:
		s.novaFault(q, http.StatusNotFound, "Flavor "+strings.Join(segs[1:], "/")+" could not be found.", nil)
	}
}

var metadataKeyRe = regexp.MustCompile(`^[a-zA-Z0-9-_:. ]{1,255}$`)

// validateCreateImage applies Nova's createImage JSON schema (microversion >= 2.1)
// and returns the message of the first error, worded as Nova words it.
func validateCreateImage(body object) string {
	field := func(path string, val any, msg string) string {
		return fmt.Sprintf("Invalid input for field/attribute %s. Value: %s. %s", path, pyStrValue(val), msg)
	}
	v, _ := body.get("createImage")
	obj, ok := v.(object)
	if !ok {
		return field("createImage", v, pyRepr(v)+" is not of type 'object'")
	}
	if name, ok := obj.get("name"); ok {
		str, isStr := name.(string)
		n := len([]rune(str))
		switch {
		case !isStr:
			return field("name", name, pyRepr(name)+" is not of type 'string'")
		case n < 1:
			return field("name", name, pyRepr(name)+" is too short")
		case n > 255:
			return field("name", name, pyRepr(name)+" is too long")
		case !validName(str):
			return "An invalid 'name' value was provided. The name must be: printable characters. Can not start or end with whitespace."
		}
	}
	if md, ok := obj.get("metadata"); ok {
		mo, isObj := md.(object)
		if !isObj {
			return field("metadata", md, pyRepr(md)+" is not of type 'object'")
		}
		var extras []string
		for _, m := range mo {
			if !metadataKeyRe.MatchString(m.key) {
				extras = append(extras, m.key)
				continue
			}
			sv, isStr := m.val.(string)
			switch {
			case !isStr:
				return field(m.key, m.val, pyRepr(m.val)+" is not of type 'string'")
			case len([]rune(sv)) > 255:
				return field(m.key, m.val, pyRepr(m.val)+" is too long")
			}
		}
		if len(extras) > 0 {
			sort.Strings(extras)
			verb := "does"
			if len(extras) > 1 {
				verb = "do"
			}
			return field("metadata", md, fmt.Sprintf("%s %s not match any of the regexes: %s",
				pyStrs(extras), verb, pyStr(metadataKeyRe.String())))
		}
	}
	if _, ok := obj.get("name"); !ok {
		return field("createImage", obj, "'name' is a required property")
	}
	var extras []string
	for _, m := range obj {
		if m.key != "name" && m.key != "metadata" {
			extras = append(extras, m.key)
		}
	}
	if msg := additional(extras); msg != "" {
		return field("createImage", obj, msg)
	}
	var top []string
	for _, m := range body {
		if m.key != "createImage" {
			top = append(top, m.key)
		}
	}
	return additional(top)
}

// additional is jsonschema's additionalProperties message.
func additional(extras []string) string {
	if len(extras) == 0 {
		return ""
	}
	verb := "was"
	if len(extras) > 1 {
		verb = "were"
	}
	return fmt.Sprintf("Additional properties are not allowed (%s %s unexpected)", pyStrs(extras), verb)
}

// validName is Nova's "name" format: printable, no leading or trailing whitespace.
func validName(s string) bool {
	if strings.TrimSpace(s) != s {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// readNovaObject reads a request body that must be a JSON object, keeping its key
// order; otherwise it answers Nova's 400 and ok is false.
func (s *Sim) readNovaObject(q *req) (body object, ok bool) {
	raw, err := readBody(q)
	if err == nil {
		var v any
		v, err = decodeOrdered(raw)
		body, ok = v.(object)
	}
	if err != nil || !ok {
		s.novaFault(q, http.StatusBadRequest, "Malformed request body", nil)
		return nil, false
	}
	return body, true
}

func (s *Sim) serverAction(q *req, id string) {
	body, ok := s.readNovaObject(q)
	if !ok {
		return
	}
	if len(body) == 0 {
		s.novaFault(q, http.StatusBadRequest, "Malformed request body", nil)
		return
	}
	action := body[0].key
	if action != "createImage" {
		s.novaFault(q, http.StatusBadRequest, "There is no such action: "+action, nil)
		return
	}
	if msg := validateCreateImage(body); msg != "" {
		s.novaFault(q, http.StatusBadRequest, msg, nil)
		return
	}
	ci, _ := body.get("createImage")
	args := ci.(object)
	nameV, _ := args.get("name")
	name := nameV.(string)
	meta := map[string]string{}
	if md, ok := args.get("metadata"); ok {
		for _, m := range md.(object) {
			meta[m.key] = m.val.(string)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.server(id)
	if sv == nil {
		s.instanceNotFound(q, id)
		return
	}
	if vm := vmStateOf(sv.status); !snapshotVMStates[vm] {
		s.novaFault(q, http.StatusConflict, fmt.Sprintf("Cannot 'createImage' instance %s while it is in vm_state %s", id, vm), nil)
		return
	}
	if sv.locked {
		// nova.exception.InstanceIsLocked, mapped to HTTPConflict by the API.
		s.novaFault(q, http.StatusConflict, fmt.Sprintf("Instance %s is locked", id), nil)
		return
	}
	if sv.taskState != "" {
		s.novaFault(q, http.StatusConflict, fmt.Sprintf("Cannot 'createImage' instance %s while it is in task_state %s", id, sv.taskState), nil)
		return
	}
	imageID := s.snapshotServer(sv, name, meta)

	if q.mv.atLeast(45) {
		body := []byte(`{"image_id": "` + imageID + `"}`)
		q.w.Header().Set("Content-Type", "application/json")
		q.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		q.w.WriteHeader(http.StatusAccepted)
		_, _ = q.w.Write(body)
		return
	}
	q.w.Header().Set("Location", q.base+"/image/images/"+imageID)
	q.w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	q.w.Header().Set("Content-Length", "0")
	q.w.WriteHeader(http.StatusAccepted)
}

// nonInheritable are the base-image properties Nova does not copy to a snapshot
// (NON_INHERITABLE_IMAGE_PROPERTIES), besides os_glance*.
var nonInheritable = map[string]bool{
	"cinder_encryption_key_id": true, "cinder_encryption_key_deletion_policy": true,
	"img_signature": true, "img_signature_hash_method": true, "img_signature_key_type": true,
	"img_signature_certificate_uuid": true,
	"block_device_mapping":           true, "bdm_v2": true, "root_device_name": true,
}

// baseImageProps are the owner_specified.openstack.* properties openstacksdk
// puts on an image it uploads (md5 and sha256 left empty, as it does unless asked
// to compute them); a snapshot of a server booted from it inherits them.
var baseImageProps = map[string]string{
	"owner_specified.openstack.md5":    "",
	"owner_specified.openstack.sha256": "",
	"owner_specified.openstack.object": "images/cirros-0.6.2-x86_64-disk",
}

// deviceName is the i-th disk's device after root ("/dev/sda" -> "/dev/sdb"...).
func deviceName(root string, i int) string {
	if root == "" {
		root = DefaultRootDevice
	}
	last := root[len(root)-1]
	if last < 'a' || last > 'z' {
		return root
	}
	return root[:len(root)-1] + string(rune('a'+(int(last-'a')+i)%26))
}

// snapshotServer makes the image (and, for a volume-backed server, the Cinder
// snapshots) of a createImage; callers hold s.mu and have checked the state.
func (s *Sim) snapshotServer(sv *server, name string, meta map[string]string) string {
	now := s.now()
	props := map[string]string{}
	for k, v := range sv.imageProps {
		if !nonInheritable[k] && !strings.HasPrefix(k, "os_glance") {
			props[k] = v
		}
	}
	im := &image{seq: s.nextSeq(), id: s.newID(), name: name, serverID: sv.id, created: now, updated: now, props: props}
	fail, stick, failVol, slow := sv.failNext, sv.stickNext, sv.failVolNext, sv.slowNext
	sv.failNext, sv.stickNext, sv.failVolNext, sv.slowNext = false, false, false, 0

	if len(sv.volumes) == 0 {
		props["owner_user_name"] = s.opts.Username
		props["owner_project_name"] = s.opts.ProjectName
		props["boot_roles"] = "member,reader"
		props["base_image_ref"] = sv.imageRef
		props["instance_uuid"] = sv.id
		props["user_id"] = s.opts.UserID
		props["image_type"] = "snapshot"
		// The libvirt driver's snapshot metadata.
		props["image_location"] = "snapshot"
		props["image_state"] = "available"
		props["owner_id"] = s.opts.ProjectID
		// Inherited from the base image, which openstacksdk uploaded (devstack's
		// cirros): its owner_specified.openstack.* properties pass on.
		for k, v := range baseImageProps {
			if _, ok := props[k]; !ok {
				props[k] = v
			}
		}
		for k, v := range meta {
			props[k] = v
		}
		b := s.opts.ImageBuildTime + slow
		// Zed: queued for about 0.7 s (the disk snapshot), then saving for the
		// upload, whatever its length.
		queue := min(s.opts.ImageQueueTime, b/3)
		im.kind, im.start, im.end, im.size = imgBuild, now, now.Add(b), 21430272
		im.saving = now.Add(queue)
		sv.taskStart, sv.taskSaving, sv.taskUntil = now, im.saving, now.Add(b)
		switch {
		case fail:
			im.kind = imgStuck
			im.vanishAt = now.Add(b / 2)
			sv.taskUntil = now.Add(b / 2)
		case stick:
			im.kind = imgStuck
		}
		sv.refresh(now)
		s.images[im.id] = im
		return im.id
	}

	// Volume-backed: everything happens inside the request; the task state is
	// never visible afterwards.
	for k, v := range meta {
		props[k] = v
	}
	var bdm []string
	for i, vol := range sv.volumes {
		sn := &snapshot{
			seq: s.nextSeq(), id: s.newID(), name: "snapshot for " + name, volumeID: vol, size: 1,
			readyAt: now.Add(s.opts.SnapshotBuildTime), failed: fail || failVol, created: now, updated: now,
		}
		s.snapshots[sn.id] = sn
		im.snapshotIDs = append(im.snapshotIDs, sn.id)
		boot := "null"
		if i == 0 {
			boot = "0"
		}
		dev := deviceName(sv.rootDevice, i)
		bdm = append(bdm, `{"delete_on_termination": false, "guest_format": null, "device_type": null, "image_id": null, `+
			`"destination_type": "volume", "disk_bus": null, "encryption_options": null, "source_type": "snapshot", `+
			`"boot_index": `+boot+`, "device_name": "`+dev+`", "tag": null, "volume_size": 1, "volume_id": null, `+
			`"encrypted": null, "no_device": null, "encryption_secret_uuid": null, "encryption_format": null, `+
			`"volume_type": null, "snapshot_id": "`+sn.id+`"}`)
	}
	// Nova copies the instance's root device name, which follows the disk bus
	// (/dev/sda on a scsi deployment), not a fixed /dev/vda.
	props["root_device_name"] = sv.rootDevice
	props["bdm_v2"] = "True"
	props["block_device_mapping"] = "[" + strings.Join(bdm, ", ") + "]"
	im.kind, im.status, im.size, im.volume = imgStatic, "active", 0, true
	if fail {
		im.vanishAt = now.Add(s.opts.SnapshotBuildTime / 2)
	}
	s.images[im.id] = im
	return im.id
}
