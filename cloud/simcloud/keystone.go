package simcloud

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
)

func (s *Sim) routeIdentity(q *req) route {
	segs := q.segs
	switch {
	case len(segs) == 0 && q.r.Method == http.MethodGet:
		return route{op: "keystone.versions", handle: s.identityVersions}
	case len(segs) == 1 && segs[0] == "v3" && q.r.Method == http.MethodGet:
		return route{op: "keystone.versions", handle: s.identityVersion}
	case len(segs) == 3 && segs[0] == "v3" && segs[1] == "auth" && segs[2] == "tokens":
		if q.r.Method == http.MethodPost {
			return route{op: "keystone.token", handle: s.issueToken}
		}
		if q.r.Method == http.MethodGet || q.r.Method == http.MethodHead {
			return route{op: "keystone.token", auth: true, handle: s.validateToken}
		}
	}
	return route{op: "keystone.other", handle: func(q *req) {
		s.opts.info("simcloud unknown identity path", "method", q.r.Method, "path", q.r.URL.RequestURI())
		writeJSON(q.w, http.StatusNotFound, map[string]any{"error": map[string]any{
			"code": 404, "title": "Not Found", "message": "The resource could not be found."}})
	}}
}

func (s *Sim) identityVersionDoc(q *req) map[string]any {
	return map[string]any{
		"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
		"links": []any{map[string]any{"rel": "self", "href": q.base + "/identity/v3/"}},
		"media-types": []any{map[string]any{
			"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}},
	}
}

func (s *Sim) identityVersions(q *req) {
	writeJSON(q.w, http.StatusMultipleChoices, map[string]any{
		"versions": map[string]any{"values": []any{s.identityVersionDoc(q)}}})
}

func (s *Sim) identityVersion(q *req) {
	writeJSON(q.w, http.StatusOK, map[string]any{"version": s.identityVersionDoc(q)})
}

// authRequest is the part of a Keystone v3 token request the simulator reads.
type authRequest struct {
	Auth struct {
		Identity struct {
			Methods  []string `json:"methods"`
			Password struct {
				User struct {
					ID       string `json:"id"`
					Name     string `json:"name"`
					Password string `json:"password"`
					Domain   struct {
						ID   string `json:"id"`
						Name string `json:"name"`
					} `json:"domain"`
				} `json:"user"`
			} `json:"password"`
			ApplicationCredential struct {
				ID     string `json:"id"`
				Name   string `json:"name"`
				Secret string `json:"secret"`
			} `json:"application_credential"`
			Token struct {
				ID string `json:"id"`
			} `json:"token"`
		} `json:"identity"`
		Scope json.RawMessage `json:"scope"`
	} `json:"auth"`
}

type scopeRequest struct {
	Project *struct {
		ID     string `json:"id"`
		Name   string `json:"name"`
		Domain struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"domain"`
	} `json:"project"`
}

func eq(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func (s *Sim) issueToken(q *req) {
	body, err := readBody(q)
	var ar authRequest
	if err == nil {
		err = json.Unmarshal(body, &ar)
	}
	if err != nil {
		writeJSON(q.w, http.StatusBadRequest, map[string]any{"error": map[string]any{
			"code": 400, "title": "Bad Request",
			"message": "The request you have made requires authentication."}})
		return
	}
	o := s.opts
	id := ar.Auth.Identity
	ok := false
	var method string
	for _, m := range id.Methods {
		switch m {
		case "password":
			u := id.Password.User
			userOK := (u.ID != "" && u.ID == o.UserID) ||
				(u.Name == o.Username && (u.Domain.Name == o.DomainName || u.Domain.ID == "default" || u.Domain.ID == o.DomainName))
			if userOK && eq(u.Password, o.Password) {
				ok, method = true, m
			}
		case "application_credential":
			ac := id.ApplicationCredential
			if o.AppCredentialSecret != "" && (ac.ID == o.AppCredentialID || (ac.ID == "" && ac.Name != "")) &&
				eq(ac.Secret, o.AppCredentialSecret) {
				ok, method = true, m
			}
		case "token":
			if s.validToken(id.Token.ID, false) {
				ok, method = true, m
			}
		}
	}
	if ok && method == "application_credential" && len(ar.Auth.Scope) > 0 && string(ar.Auth.Scope) != "null" {
		// Keystone refuses a scope with an application credential.
		writeJSON(q.w, http.StatusUnauthorized, map[string]any{"error": map[string]any{
			"code": 401, "title": "Unauthorized",
			"message": "The request you have made requires authentication."}})
		return
	}
	hasScope := len(ar.Auth.Scope) > 0 && string(ar.Auth.Scope) != "null"
	if ok && hasScope {
		var sc scopeRequest
		if json.Unmarshal(ar.Auth.Scope, &sc) == nil && sc.Project != nil {
			p := sc.Project
			if !(p.ID == o.ProjectID || (p.Name == o.ProjectName)) {
				ok = false
			}
		}
	}
	if !ok {
		s.unauthorized(q)
		return
	}
	// Without a scope Keystone issues an unscoped token (the simulated user has
	// no default project): no project, no roles, no catalog. An application
	// credential always carries its project.
	scoped := hasScope || method == "application_credential"
	s.mu.Lock()
	now := s.now()
	exp := now.Add(o.TokenTTL)
	var b [16]byte
	s.tokenRand.Read(b[:])
	tok := fmt.Sprintf("gAAAAAB%x", b)
	s.tokens[tok] = tokenInfo{expires: exp, scoped: scoped}
	s.mu.Unlock()

	q.w.Header().Set("X-Subject-Token", tok)
	writeJSON(q.w, http.StatusCreated, map[string]any{"token": s.tokenBody(q, method, now, exp, scoped)})
}

func (s *Sim) tokenBody(q *req, method string, issued, exp interface{ Format(string) string }, scoped bool) map[string]any {
	o := s.opts
	domain := map[string]any{"id": "default", "name": o.DomainName}
	ep := func(kind, url string) []any {
		return []any{map[string]any{
			"id": kind + "-public", "interface": "public", "region": o.Region,
			"region_id": o.Region, "url": url,
		}}
	}
	// Zed's compute endpoint has no project id; Huawei documents the other form.
	compute := q.base + "/compute/v2.1"
	if s.ComputeProjectID() {
		compute += "/" + o.ProjectID
	}
	volume := q.base + "/volume/v3/" + o.ProjectID
	const tf = "2006-01-02T15:04:05.000000Z"
	body := map[string]any{
		"methods":    []string{method},
		"user":       map[string]any{"domain": domain, "id": o.UserID, "name": o.Username, "password_expires_at": nil},
		"audit_ids":  []string{"c2ltY2xvdWQtYXVkaXQ"},
		"expires_at": exp.Format(tf),
		"issued_at":  issued.Format(tf),
	}
	if !scoped {
		return body
	}
	body["project"] = map[string]any{"domain": domain, "id": o.ProjectID, "name": o.ProjectName}
	body["is_domain"] = false
	// The simulated user is devstack's admin: the admin role is why Nova shows
	// the OS-EXT-SRV-ATTR fields and host_status.
	body["roles"] = []any{
		map[string]any{"id": "4f1b6bd6e1f6438b8d1e0c9b0a3f2c11", "name": "admin"},
		map[string]any{"id": "9fe2ff9ee4384b1894a90878d3e92bab", "name": "member"},
		map[string]any{"id": "b4bc6aa0dbc14c2b9f7a2a4b8ae1a5f2", "name": "reader"},
	}
	body["catalog"] = []any{
		map[string]any{"type": "identity", "name": "keystone", "id": "identity",
			"endpoints": ep("identity", q.base+"/identity")},
		map[string]any{"type": "compute", "name": "nova", "id": "compute",
			"endpoints": ep("compute", compute)},
		map[string]any{"type": "image", "name": "glance", "id": "image",
			"endpoints": ep("image", q.base+"/image")},
		map[string]any{"type": "block-storage", "name": "cinder", "id": "block-storage",
			"endpoints": ep("block-storage", volume)},
		map[string]any{"type": "volumev3", "name": "cinderv3", "id": "volumev3",
			"endpoints": ep("volumev3", volume)},
	}
	return body
}

// validateToken answers GET /v3/auth/tokens for the X-Subject-Token.
func (s *Sim) validateToken(q *req) {
	sub := q.r.Header.Get("X-Subject-Token")
	s.mu.Lock()
	ti, ok := s.tokens[sub]
	now := s.now()
	s.mu.Unlock()
	if !ok || !now.Before(ti.expires) {
		writeJSON(q.w, http.StatusNotFound, map[string]any{"error": map[string]any{
			"code": 404, "title": "Not Found", "message": "Could not find token: " + sub + "."}})
		return
	}
	q.w.Header().Set("X-Subject-Token", sub)
	writeJSON(q.w, http.StatusOK, map[string]any{"token": s.tokenBody(q, "password", now, ti.expires, ti.scoped)})
}
