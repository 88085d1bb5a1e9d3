package simcloud

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// req is one API request on its way through the simulator.
type req struct {
	w     http.ResponseWriter
	r     *http.Request
	op    string
	segs  []string // path segments after the service prefix (and project id)
	base  string   // the simulator's base URL
	mv    version  // compute microversion (compute requests only)
	token string
	// projectInPath records a compute URL with the project id, which Nova's
	// links then repeat.
	projectInPath bool
}

type route struct {
	op     string
	id     string // the server of a createImage
	auth   bool
	handle func(*req)
}

func (s *Sim) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_sim/") || r.URL.Path == "/_sim" {
		s.serveControl(w, r)
		return
	}
	s.mu.Lock()
	base := s.baseURL
	s.mu.Unlock()
	q := &req{w: w, r: r, base: base, token: r.Header.Get("X-Auth-Token")}
	rt := s.route(q)
	s.mu.Lock()
	s.requests[rt.op]++
	if rt.op == "compute.createImage" {
		s.createCalls[rt.id]++
	}
	s.mu.Unlock()
	s.opts.logf("simcloud request", "method", r.Method, "path", r.URL.RequestURI(), "op", rt.op)

	after, handled := s.applyFaults(q, rt.op, false)
	if handled {
		return
	}
	if rt.auth && !s.validToken(q.token, !strings.HasPrefix(rt.op, "keystone.")) {
		s.unauthorized(q)
		return
	}
	if len(after) == 0 {
		rt.handle(q)
		return
	}
	// The fault strikes after the request was processed: the state changed, the
	// client sees a failure (an unknown outcome for createImage).
	buf := &bufferedWriter{h: http.Header{}}
	q.w = buf
	rt.handle(q)
	q.w = w
	s.strike(q, rt.op, after)
}

// bufferedWriter swallows a response that a post-processing fault replaces.
type bufferedWriter struct {
	h    http.Header
	body bytes.Buffer
	code int
}

func (b *bufferedWriter) Header() http.Header         { return b.h }
func (b *bufferedWriter) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedWriter) WriteHeader(code int)        { b.code = code }

// route maps a request to its operation and handler.
func (s *Sim) route(q *req) route {
	path := q.r.URL.Path
	switch {
	case path == "/identity" || strings.HasPrefix(path, "/identity/"):
		q.segs = splitPath(strings.TrimPrefix(path, "/identity"))
		return s.routeIdentity(q)
	case path == "/compute" || strings.HasPrefix(path, "/compute/"):
		q.segs = splitPath(strings.TrimPrefix(path, "/compute"))
		return s.routeCompute(q)
	case path == "/image" || strings.HasPrefix(path, "/image/"):
		q.segs = splitPath(strings.TrimPrefix(path, "/image"))
		return s.routeImage(q)
	case path == "/volume" || strings.HasPrefix(path, "/volume/"):
		q.segs = splitPath(strings.TrimPrefix(path, "/volume"))
		return s.routeVolume(q)
	case path == "/":
		return route{op: "root", handle: func(q *req) {
			writeJSON(q.w, http.StatusOK, map[string]any{"services": map[string]string{
				"identity": q.base + "/identity/v3", "compute": q.base + "/compute/v2.1",
				"image": q.base + "/image", "volume": q.base + "/volume/v3",
			}})
		}}
	}
	return route{op: "unknown", handle: func(q *req) {
		s.opts.info("simcloud unknown path", "method", q.r.Method, "path", q.r.URL.RequestURI())
		writeText(q.w, http.StatusNotFound, "404 Not Found\n\nThe resource could not be found.\n\n   ")
	}}
}

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// validToken reports whether tok is a live token; needScope refuses unscoped
// ones, as keystonemiddleware does in front of Nova, Glance and Cinder.
func (s *Sim) validToken(tok string, needScope bool) bool {
	if tok == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ti, ok := s.tokens[tok]
	return ok && s.now().Before(ti.expires) && (ti.scoped || !needScope)
}

// unauthorized answers as keystonemiddleware does for a missing or expired token.
func (s *Sim) unauthorized(q *req) {
	q.w.Header().Set("WWW-Authenticate", fmt.Sprintf("Keystone uri=%q", q.base+"/identity"))
	writeJSON(q.w, http.StatusUnauthorized, map[string]any{"error": map[string]any{
		"code": 401, "title": "Unauthorized",
		"message": "The request you have made requires authentication.",
	}})
}

// faultAction is what matching faults decided for one request.
type faultAction struct {
	status     int
	retryAfter time.Duration
	hang       bool
}

// applyFaults applies latency, and the faults that strike before (after=false)
// processing; it returns the ones that strike after, and whether it answered.
func (s *Sim) applyFaults(q *req, op string, _ bool) ([]faultAction, bool) {
	var latency time.Duration
	var before, after []faultAction
	s.mu.Lock()
	ids := make([]int, 0, len(s.faults))
	for id := range s.faults {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		f := s.faults[id]
		if f.Op != "*" && f.Op != op {
			continue
		}
		strikes := f.Hang || f.Status429RetryAfter > 0 || f.ErrorStatus != 0
		if f.ErrorRate > 0 && f.ErrorRate < 1 && s.faultRand.Float64() >= f.ErrorRate {
			continue
		}
		latency += f.Latency
		if strikes {
			a := faultAction{status: f.ErrorStatus, retryAfter: f.Status429RetryAfter, hang: f.Hang}
			if f.After {
				after = append(after, a)
			} else {
				before = append(before, a)
			}
		}
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				delete(s.faults, id)
			}
		}
	}
	s.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-q.r.Context().Done():
			t.Stop()
			return nil, true
		case <-s.closed:
			t.Stop()
			return nil, true
		}
	}
	if len(before) > 0 {
		s.strike(q, op, before)
		return nil, true
	}
	return after, false
}

// strike answers with the first injected failure.
func (s *Sim) strike(q *req, op string, acts []faultAction) {
	a := acts[0]
	switch {
	case a.hang:
		select {
		case <-q.r.Context().Done():
		case <-s.closed:
		}
		// The client is gone; a 503 to nobody keeps net/http quiet.
		q.w.WriteHeader(http.StatusServiceUnavailable)
	case a.retryAfter > 0:
		secs := int(math.Ceil(a.retryAfter.Seconds()))
		q.w.Header().Set("Retry-After", strconv.Itoa(secs))
		s.fault(q, op, http.StatusTooManyRequests, "This request was rate-limited.", map[string]any{"retryAfter": strconv.Itoa(secs)})
	default:
		code := a.status
		if code == 0 {
			code = http.StatusInternalServerError
		}
		msg := "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/ and attach the Nova API log if possible.\n<class 'simcloud.InjectedFault'>"
		if code == http.StatusServiceUnavailable {
			msg = "The server is currently unavailable. Please try again at a later time."
		}
		s.fault(q, op, code, msg, nil)
	}
}

// fault writes an error in the style of the service the operation belongs to.
func (s *Sim) fault(q *req, op string, code int, msg string, extra map[string]any) {
	switch {
	case strings.HasPrefix(op, "compute."):
		s.novaFault(q, code, msg, extra)
	case strings.HasPrefix(op, "volume."):
		cinderFault(q.w, code, msg)
	case strings.HasPrefix(op, "image."):
		webobError(q, code, msg)
	default:
		writeJSON(q.w, code, map[string]any{"error": map[string]any{"code": code, "title": http.StatusText(code), "message": msg}})
	}
}

// faultName is the key Nova (and Cinder) wrap an error in, by status.
func faultName(code int) string {
	switch code {
	case 400:
		return "badRequest"
	case 401:
		return "unauthorized"
	case 403:
		return "forbidden"
	case 404:
		return "itemNotFound"
	case 405:
		return "badMethod"
	case 409:
		return "conflictingRequest"
	case 413, 429:
		return "overLimit"
	case 415:
		return "badMediaType"
	case 501:
		return "notImplemented"
	case 503:
		return "serviceUnavailable"
	}
	return "computeFault"
}

func cinderFault(w http.ResponseWriter, code int, msg string) {
	writeJSONCT(w, code, "application/json", map[string]any{faultName(code): map[string]any{"code": code, "message": msg}})
}

// webobError answers like Glance's webob exceptions: the Accept header chooses
// between text/html and application/json, and plain text when it accepts
// neither. No Accept header or */* (curl) gets the HTML page; gophercloud sends
// Accept: application/json and gets JSON.
func webobError(q *req, code int, msg string) {
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	switch acceptOffer(q.r.Header.Get("Accept"), "text/html", "application/json") {
	case "application/json":
		writeJSONCT(q.w, code, "application/json", map[string]any{
			"message": msg + "<br /><br />\n\n\n", "code": status, "title": http.StatusText(code)})
	case "text/html":
		body := "<html>\n <head>\n  <title>" + status + "</title>\n </head>\n <body>\n  <h1>" + status +
			"</h1>\n  " + pyHTMLEscape(msg) + "<br /><br />\n\n\n\n </body>\n</html>"
		writeBody(q.w, code, "text/html; charset=UTF-8", body)
	default:
		writeText(q.w, code, status+"\n\n"+msg+"\n\n   ")
	}
}

// pyHTMLEscape is Python's html.escape, which webob applies to the explanation.
var pyHTMLEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#x27;").Replace

// acceptOffer picks the offer an Accept header prefers, as webob's
// acceptable_offers does: each offer takes the quality of the most specific
// range that matches it, the highest quality wins and ties go to the earlier
// offer; "" when none is acceptable. No header accepts everything.
func acceptOffer(header string, offers ...string) string {
	if strings.TrimSpace(header) == "" {
		return offers[0]
	}
	best, bestQ := "", 0.0
	for _, offer := range offers {
		otype, _, _ := strings.Cut(offer, "/")
		q, spec := 0.0, -1
		for _, rng := range strings.Split(header, ",") {
			parts := strings.Split(rng, ";")
			mr := strings.ToLower(strings.TrimSpace(parts[0]))
			rq := 1.0
			for _, p := range parts[1:] {
				if v, ok := strings.CutPrefix(strings.TrimSpace(p), "q="); ok {
					if f, err := strconv.ParseFloat(v, 64); err == nil {
						rq = f
					}
				}
			}
			s := -1
			switch {
			case mr == offer:
				s = 2
			case mr == otype+"/*":
				s = 1
			case mr == "*/*":
				s = 0
			}
			if s > spec {
				q, spec = rq, s
			}
		}
		if spec >= 0 && q > bestQ {
			best, bestQ = offer, q
		}
	}
	return best
}

func writeText(w http.ResponseWriter, code int, body string) {
	writeBody(w, code, "text/plain; charset=UTF-8", body)
}

func writeBody(w http.ResponseWriter, code int, ct, body string) {
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// writeJSON writes v as Python's json.dumps would (", " and ": " separators,
// non-ASCII escaped), which is what every OpenStack service sends.
func writeJSON(w http.ResponseWriter, code int, v any) {
	writeJSONCT(w, code, "application/json", v)
}

func writeJSONCT(w http.ResponseWriter, code int, ct string, v any) {
	body := pyJSON(v)
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// pyJSON marshals v and reformats it with Python's default separators.
func pyJSON(v any) []byte {
	var raw bytes.Buffer
	enc := json.NewEncoder(&raw)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("simcloud: marshal response: %v", err))
	}
	src := bytes.TrimRight(raw.Bytes(), "\n")
	var out bytes.Buffer
	inStr, esc := false, false
	for i := 0; i < len(src); {
		c := src[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRune(src[i:])
			if r > 0xffff {
				r1, r2 := utf16Pair(r)
				fmt.Fprintf(&out, "\\u%04x\\u%04x", r1, r2)
			} else {
				fmt.Fprintf(&out, "\\u%04x", r)
			}
			i += n
			continue
		}
		out.WriteByte(c)
		i++
		switch {
		case inStr && esc:
			esc = false
		case inStr && c == '\\':
			esc = true
		case c == '"':
			inStr = !inStr
		case !inStr && (c == ',' || c == ':'):
			out.WriteByte(' ')
		}
	}
	return out.Bytes()
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// readBody reads a request body of at most 1 MiB.
func readBody(q *req) ([]byte, error) {
	var b bytes.Buffer
	if _, err := b.ReadFrom(http.MaxBytesReader(q.w, q.r.Body, 1<<20)); err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return b.Bytes(), nil
}

// pageParams parses limit (capped at max, default def) and marker.
func pageParams(q *req, def, max int) (limit int, marker string, ok bool) {
	limit = def
	if v := q.r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, "", false
		}
		limit = n
	}
	if limit > max {
		limit = max
	}
	return limit, q.r.URL.Query().Get("marker"), true
}

// timeGlance formats like Glance (seconds, Z).
func timeGlance(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// timeNova formats like Nova (seconds, Z).
func timeNova(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// timeCinder formats like Cinder (microseconds, no zone).
func timeCinder(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000") }
