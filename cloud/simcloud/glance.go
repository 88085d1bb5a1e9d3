package simcloud

import (
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// glanceDefaultLimit is Glance's limit_param_default: its page size when the
// client gives none (the cap is api_limit_max, Options.MaxLimit).
const glanceDefaultLimit = 25

func (s *Sim) routeImage(q *req) route {
	segs := q.segs
	get := q.r.Method == http.MethodGet
	switch {
	case len(segs) == 0 && get, len(segs) == 1 && segs[0] == "v2" && get:
		return route{op: "image.versions", handle: func(q *req) { s.imageVersions(q, http.StatusMultipleChoices) }}
	case len(segs) == 1 && segs[0] == "versions" && get:
		return route{op: "image.versions", handle: func(q *req) { s.imageVersions(q, http.StatusOK) }}
	case len(segs) == 2 && segs[0] == "images" && get:
		// Nova's Location points here (no /v2): Glance answers with its versions.
		return route{op: "image.versions", handle: func(q *req) { s.imageVersions(q, http.StatusMultipleChoices) }}
	case len(segs) < 2 || segs[0] != "v2":
	case segs[1] == "schemas" && get && len(segs) == 3:
		return route{op: "image.schema", auth: true, handle: func(q *req) { s.imageSchema(q, segs[2]) }}
	case segs[1] == "images" && len(segs) == 2 && get:
		return route{op: "image.list", auth: true, handle: s.listImagesHTTP}
	case segs[1] == "images" && len(segs) == 3:
		id := segs[2]
		switch q.r.Method {
		case http.MethodGet:
			return route{op: "image.get", auth: true, handle: func(q *req) { s.getImageHTTP(q, id) }}
		case http.MethodDelete:
			return route{op: "image.delete", auth: true, handle: func(q *req) { s.deleteImageHTTP(q, id) }}
		case http.MethodPatch:
			return route{op: "image.update", auth: true, handle: func(q *req) { s.patchImageHTTP(q, id) }}
		}
	}
	return route{op: "image.other", auth: true, handle: func(q *req) {
		s.opts.info("simcloud unknown image path", "method", q.r.Method, "path", q.r.URL.RequestURI())
		webobError(q, http.StatusNotFound, "The resource could not be found.")
	}}
}

func (s *Sim) imageVersions(q *req, code int) {
	var vs []any
	for i, v := range []string{"2.16", "2.15", "2.14", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.1", "2.0"} {
		st := "SUPPORTED"
		if i == 0 {
			st = "CURRENT"
		}
		vs = append(vs, map[string]any{"id": "v" + v, "status": st,
			"links": []any{map[string]any{"rel": "self", "href": q.base + "/image/v2/"}}})
	}
	writeJSON(q.w, code, map[string]any{"versions": vs})
}

// schemaFields are the image attributes Glance's schema defines; every other key
// of an image is a free-form property.
var schemaFields = map[string]bool{
	"id": true, "name": true, "status": true, "visibility": true, "protected": true, "os_hidden": true,
	"checksum": true, "os_hash_algo": true, "os_hash_value": true, "owner": true, "size": true,
	"virtual_size": true, "min_ram": true, "min_disk": true, "disk_format": true, "container_format": true,
	"created_at": true, "updated_at": true, "tags": true, "self": true, "file": true, "schema": true,
	"direct_url": true, "locations": true, "stores": true,
}

var readOnlyFields = map[string]bool{
	"id": true, "status": true, "checksum": true, "os_hash_algo": true, "os_hash_value": true,
	"owner": true, "size": true, "virtual_size": true, "created_at": true, "updated_at": true,
	"self": true, "file": true, "schema": true, "direct_url": true, "stores": true,
}

func (s *Sim) imageSchema(q *req, which string) {
	props := map[string]any{}
	for k := range schemaFields {
		props[k] = map[string]any{"type": []string{"null", "string"}}
	}
	props["protected"] = map[string]any{"type": "boolean"}
	props["os_hidden"] = map[string]any{"type": "boolean"}
	props["tags"] = map[string]any{"type": "array", "items": map[string]any{"type": "string", "maxLength": 255}}
	props["min_ram"] = map[string]any{"type": "integer"}
	props["min_disk"] = map[string]any{"type": "integer"}
	props["size"] = map[string]any{"type": []string{"null", "integer"}, "readOnly": true}
	props["virtual_size"] = map[string]any{"type": []string{"null", "integer"}, "readOnly": true}
	props["visibility"] = map[string]any{"type": "string", "enum": []string{"community", "public", "private", "shared"}}
	for k := range readOnlyFields {
		if m, ok := props[k].(map[string]any); ok {
			m["readOnly"] = true
		}
	}
	img := map[string]any{
		"name": "image", "properties": props, "additionalProperties": map[string]any{"type": "string"},
		"links": []any{
			map[string]any{"rel": "self", "href": "{self}"},
			map[string]any{"rel": "enclosure", "href": "{file}"},
			map[string]any{"rel": "describedby", "href": "{schema}"},
		},
	}
	switch which {
	case "image":
		writeJSON(q.w, http.StatusOK, img)
	case "images":
		writeJSON(q.w, http.StatusOK, map[string]any{
			"name":       "images",
			"properties": map[string]any{"images": map[string]any{"type": "array", "items": img}, "schema": map[string]any{"type": "string"}, "first": map[string]any{"type": "string"}, "next": map[string]any{"type": "string"}},
			"links": []any{
				map[string]any{"rel": "first", "href": "{first}"},
				map[string]any{"rel": "next", "href": "{next}"},
				map[string]any{"rel": "describedby", "href": "{schema}"},
			},
		})
	default:
		webobError(q, http.StatusNotFound, "The resource could not be found.")
	}
}

// imageView is an image as Glance v2 shows it; callers hold s.mu.
func (s *Sim) imageView(im *image) map[string]any {
	now := s.now()
	st := im.statusAt(now)
	vis := im.visibility
	if vis == "" {
		vis = "private"
	}
	out := map[string]any{
		"id": im.id, "name": im.name, "status": st, "visibility": vis, "protected": im.protected,
		"os_hidden": false, "checksum": nil, "os_hash_algo": nil, "os_hash_value": nil,
		"owner": s.opts.ProjectID, "size": nil, "virtual_size": nil, "min_ram": 0, "min_disk": im.minDisk(),
		"disk_format": nil, "container_format": nil,
		"created_at": timeGlance(im.created), "updated_at": timeGlance(im.updatedAt(now)),
		"tags": []string{}, "self": "/v2/images/" + im.id, "file": "/v2/images/" + im.id + "/file",
		"schema": "/v2/schemas/image",
	}
	if st == "active" {
		data := im.id
		if im.size == 0 {
			data = ""
		}
		md := md5.Sum([]byte(data))
		sh := sha512.Sum512([]byte(data))
		out["checksum"] = hex.EncodeToString(md[:])
		out["os_hash_algo"] = "sha512"
		out["os_hash_value"] = hex.EncodeToString(sh[:])
		out["size"] = im.size
		out["disk_format"] = "qcow2"
		out["container_format"] = "bare"
		if im.size > 0 {
			out["virtual_size"] = 1073741824
			// An image with data has a location in a store (multi-store
			// Glance lists their ids); a volume-backed one has none.
			out["stores"] = "file"
		}
	}
	for k, v := range im.props {
		if !schemaFields[k] {
			out[k] = v
		}
	}
	return out
}

func (im *image) minDisk() int {
	if im.serverID != "" && !im.volume {
		return 1
	}
	return 0
}

// listImagesHTTP is GET /v2/images: Glance's filters (any unknown key is an exact
// property match), sorting and marker pagination.
func (s *Sim) listImagesHTTP(q *req) {
	query := q.r.URL.Query()
	limit, marker, ok := pageParams(q, glanceDefaultLimit, s.opts.MaxLimit)
	if !ok {
		webobError(q, http.StatusBadRequest, "limit param must be an integer")
		return
	}
	sortKey, sortDir := "created_at", "desc"
	if v := query.Get("sort_key"); v != "" {
		sortKey = v
	}
	if v := query.Get("sort_dir"); v != "" {
		sortDir = v
	}
	if v := query.Get("sort"); v != "" {
		first, _, _ := strings.Cut(v, ",")
		k, d, _ := strings.Cut(first, ":")
		sortKey = k
		if d != "" {
			sortDir = d
		}
	}
	if sortDir != "asc" && sortDir != "desc" {
		webobError(q, http.StatusBadRequest, "Invalid sort direction: "+sortDir)
		return
	}
	ignored := map[string]bool{"limit": true, "marker": true, "sort_key": true, "sort_dir": true, "sort": true,
		"member_status": true, "size_min": true, "size_max": true, "created_at": true, "updated_at": true}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	all := s.sortedImages()
	key := func(im *image) string {
		switch sortKey {
		case "name":
			return im.name
		case "status":
			return im.statusAt(now)
		case "id":
			return im.id
		case "updated_at":
			return im.updatedAt(now).Format("2006-01-02T15:04:05.000000000")
		case "size":
			return fmt.Sprintf("%020d", im.size)
		default:
			return im.created.Format("2006-01-02T15:04:05.000000000")
		}
	}
	// before reports whether a comes first in the listing order (key, then id,
	// both in the requested direction).
	before := func(a, b *image) bool {
		ka, kb := key(a), key(b)
		if ka == kb {
			ka, kb = a.id, b.id
		}
		if sortDir == "asc" {
			return ka < kb
		}
		return ka > kb
	}
	sort.SliceStable(all, func(i, j int) bool { return before(all[i], all[j]) })
	var markerImg *image
	if marker != "" {
		if markerImg = s.image(marker); markerImg == nil {
			webobError(q, http.StatusBadRequest, "Image "+marker+" not found.")
			return
		}
	}
	var page []*image
	for _, im := range all {
		if markerImg != nil && !before(markerImg, im) {
			continue
		}
		if !s.imageMatches(im, query, ignored) {
			continue
		}
		if len(page) == limit {
			break
		}
		page = append(page, im)
	}
	list := make([]any, 0, len(page))
	for _, im := range page {
		list = append(list, s.imageView(im))
	}
	// Glance builds its links from dict(request.params) with urlencode: one value
	// per key (the last), in first-seen order, quote_plus-encoded, marker last.
	params := glanceParams(q.r.URL.RawQuery)
	first := "/v2/images"
	if len(params) > 0 {
		first += "?" + strings.Join(params, "&")
	}
	body := map[string]any{"images": list, "first": first, "schema": "/v2/schemas/images"}
	if len(page) > 0 && len(page) == limit {
		body["next"] = "/v2/images?" + strings.Join(append(params, "marker="+url.QueryEscape(page[len(page)-1].id)), "&")
	}
	writeJSON(q.w, http.StatusOK, body)
}

// glanceParams is pyQueryPairs with Python dict semantics: one pair per key,
// the last value in the first key's place.
func glanceParams(raw string) []string {
	pairs := pyQueryPairs(raw)
	var out []string
	at := map[string]int{}
	for _, p := range pairs {
		k, _, _ := strings.Cut(p, "=")
		if i, ok := at[k]; ok {
			out[i] = p
			continue
		}
		at[k] = len(out)
		out = append(out, p)
	}
	return out
}

// inFilter matches Glance's "in:a,b" operator or an exact value.
func inFilter(filter, value string) bool {
	if rest, ok := strings.CutPrefix(filter, "in:"); ok {
		for _, v := range strings.Split(rest, ",") {
			if strings.Trim(v, `"`) == value {
				return true
			}
		}
		return false
	}
	return filter == value
}

func (s *Sim) imageMatches(im *image, query url.Values, ignored map[string]bool) bool {
	t := s.now()
	for k, vals := range query {
		if ignored[k] || len(vals) == 0 {
			continue
		}
		v := vals[len(vals)-1]
		switch k {
		case "name":
			if !inFilter(v, im.name) {
				return false
			}
		case "id":
			if !inFilter(v, im.id) {
				return false
			}
		case "status":
			if !inFilter(v, im.statusAt(t)) {
				return false
			}
		case "visibility":
			vis := im.visibility
			if vis == "" {
				vis = "private"
			}
			if v != "all" && v != vis {
				return false
			}
		case "protected":
			if v != fmt.Sprint(im.protected) {
				return false
			}
		case "owner":
			if v != s.opts.ProjectID {
				return false
			}
		case "os_hidden":
			if v == "true" {
				return false
			}
		case "disk_format", "container_format":
			view := s.imageView(im)
			if fmt.Sprint(view[k]) != v {
				return false
			}
		case "tag":
			return false // images here carry no tags
		default:
			pv, ok := im.props[k]
			if !ok || pv != v {
				return false
			}
		}
	}
	return true
}

func (s *Sim) getImageHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	im := s.image(id)
	if im == nil {
		webobError(q, http.StatusNotFound, "No image found with ID "+id)
		return
	}
	writeJSON(q.w, http.StatusOK, s.imageView(im))
}

func (s *Sim) deleteImageHTTP(q *req, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	im := s.image(id)
	if im == nil {
		webobError(q, http.StatusNotFound, "Failed to find image "+id+" to delete")
		return
	}
	if im.protected {
		webobError(q, http.StatusForbidden, "Image "+id+" is protected and cannot be deleted.")
		return
	}
	// Deleting an image leaves its volume snapshots, as Glance does.
	delete(s.images, id)
	// Glance's 204 carries webob's default Content-Type.
	q.w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	q.w.WriteHeader(http.StatusNoContent)
}

type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
}

// patchImageHTTP applies a JSON patch (media type
// application/openstack-images-v2.1-json-patch), as `openstack image set` sends.
func (s *Sim) patchImageHTTP(q *req, id string) {
	ct := q.r.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "application/openstack-images-v2.1-json-patch") &&
		!strings.HasPrefix(ct, "application/openstack-images-v2.0-json-patch") {
		webobError(q, http.StatusUnsupportedMediaType, "Unsupported Content-Type")
		return
	}
	raw, err := readBody(q)
	var ops []patchOp
	if err == nil {
		err = json.Unmarshal(raw, &ops)
	}
	if err != nil {
		webobError(q, http.StatusBadRequest, "Malformed JSON in request body.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	im := s.image(id)
	if im == nil {
		webobError(q, http.StatusNotFound, "No image found with ID "+id)
		return
	}
	// Validate every op first so that a bad patch changes nothing.
	next := *im
	next.props = copyMap(im.props)
	if next.props == nil {
		next.props = map[string]string{}
	}
	for _, op := range ops {
		attr := strings.TrimPrefix(op.Path, "/")
		if op.Op != "add" && op.Op != "replace" && op.Op != "remove" {
			webobError(q, http.StatusBadRequest, fmt.Sprintf("Operation objects must contain exactly one member named \"add\", \"remove\", or \"replace\"."))
			return
		}
		if readOnlyFields[attr] {
			webobError(q, http.StatusForbidden, "Attribute '"+attr+"' is read-only.")
			return
		}
		switch attr {
		case "protected", "os_hidden":
			var b bool
			if json.Unmarshal(op.Value, &b) != nil || op.Op == "remove" {
				webobError(q, http.StatusBadRequest, "Invalid value for "+attr)
				return
			}
			if attr == "protected" {
				next.protected = b
			}
		case "name":
			var n string
			if op.Op == "remove" || json.Unmarshal(op.Value, &n) != nil {
				webobError(q, http.StatusBadRequest, "Invalid value for name")
				return
			}
			next.name = n
		case "visibility":
			var v string
			if json.Unmarshal(op.Value, &v) != nil {
				webobError(q, http.StatusBadRequest, "Invalid visibility value")
				return
			}
			next.visibility = v
		case "tags", "min_ram", "min_disk", "disk_format", "container_format":
			// Accepted and not kept: nothing imagekeeper reads depends on them.
		default:
			_, exists := next.props[attr]
			switch op.Op {
			case "remove":
				if !exists {
					webobError(q, http.StatusConflict, "Property "+attr+" does not exist.")
					return
				}
				delete(next.props, attr)
			case "replace":
				if !exists {
					webobError(q, http.StatusConflict, "Property "+attr+" does not exist.")
					return
				}
				fallthrough
			default:
				var v string
				if json.Unmarshal(op.Value, &v) != nil {
					webobError(q, http.StatusBadRequest, "Invalid value for property "+attr+": must be a string")
					return
				}
				next.props[attr] = v
			}
		}
	}
	next.updated = s.now()
	*im = next
	writeJSON(q.w, http.StatusOK, s.imageView(im))
}
