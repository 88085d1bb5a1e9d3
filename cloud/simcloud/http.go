package simcloud

import "net/http"

func (s *Sim) serveHTTP(w http.ResponseWriter, r *http.Request) {
	http.NotFound(w, r)
}
