package openstack

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// op names one Cloud method: its words for errors and its names for Observe.
type op struct {
	desc    string // "create image", for cloud.Error.Op
	service string // "compute", "image", "volume"
	name    string // "create_image", for metrics
}

var (
	opListServers    = op{"list servers", "compute", "list_servers"}
	opGetServer      = op{"get server", "compute", "get_server"}
	opCreateImage    = op{"create image", "compute", "create_image"}
	opGetImage       = op{"get image", "image", "get_image"}
	opListImages     = op{"list images", "image", "list_images"}
	opDeleteImage    = op{"delete image", "image", "delete_image"}
	opGetSnapshot    = op{"get snapshot", "volume", "get_snapshot"}
	opListSnapshots  = op{"list snapshots", "volume", "list_snapshots"}
	opDeleteSnapshot = op{"delete snapshot", "volume", "delete_snapshot"}
	opCreateServer   = op{"create server", "compute", "create_server"}
	opDeleteServer   = op{"delete server", "compute", "delete_server"}
	opConsoleOutput  = op{"console output", "compute", "console_output"}
	opGetFlavor      = op{"get flavor", "compute", "get_flavor"}
	opGetVolume      = op{"get volume", "volume", "get_volume"}
	opDeleteVolume   = op{"delete volume", "volume", "delete_volume"}
)

// unsafeToRepeat reports whether o makes something each time it reaches the cloud,
// so that a lost answer leaves its outcome unknown.
func unsafeToRepeat(o op) bool { return o == opCreateImage || o == opCreateServer }

// classify turns whatever gophercloud or the transport returned into a
// *cloud.Error. It is the only place where HTTP status codes become sentinels:
//
//	status / failure              kind
//	400                           ErrInvalid (delete snapshot/volume: ErrInUse, Cinder's Invalid*)
//	401 (re-auth failed)          ErrUnavailable
//	403                           ErrInvalid (delete image: ErrProtected; message mentions quota: ErrQuota)
//	404                           ErrNotFound
//	409                           ErrBusy (delete image / delete snapshot: ErrInUse)
//	413                           ErrQuota
//	other 4xx                     ErrInvalid
//	429                           ErrUnavailable (retries exhausted)
//	5xx                           ErrUnavailable; create image/server: ErrUnknownOutcome
//	no answer, never sent (dial)  ErrUnavailable
//	no answer (timeout, reset)    ErrUnavailable; create image/server: ErrUnknownOutcome
func classify(o op, id string, err error) error {
	if err == nil {
		return nil
	}
	var ce *cloud.Error
	if errors.As(err, &ce) {
		return err
	}
	e := &cloud.Error{Op: o.desc, ID: id}

	var reauth *gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &reauth) {
		// The request was answered 401 and never replayed: nothing was done.
		e.Status = http.StatusUnauthorized
		e.Kind = cloud.ErrUnavailable
		e.Reason = "token expired and re-authentication failed"
		e.Err = reauth.ErrReauth
		return e
	}

	rc, ok := responseError(err)
	if !ok {
		e.Err = err
		e.Kind = cloud.ErrUnavailable
		if unsafeToRepeat(o) && !notSent(err) {
			e.Kind = cloud.ErrUnknownOutcome
		}
		return e
	}

	e.Status = rc.Actual
	e.Reason = faultMessage(rc.Body)
	switch s := rc.Actual; {
	case s == http.StatusBadRequest && (o == opDeleteSnapshot || o == opDeleteVolume):
		e.Kind = cloud.ErrInUse
	case s == http.StatusUnauthorized:
		e.Kind = cloud.ErrUnavailable
	case s == http.StatusForbidden && o == opDeleteImage:
		e.Kind = cloud.ErrProtected
	case s == http.StatusForbidden && strings.Contains(strings.ToLower(e.Reason), "quota"):
		// Nova answers 403 for its OverQuota on volume snapshots, and also 403 for a
		// policy refusal: only the message tells them apart.
		e.Kind = cloud.ErrQuota
	case s == http.StatusNotFound:
		e.Kind = cloud.ErrNotFound
	case s == http.StatusConflict && (o == opDeleteImage || o == opDeleteSnapshot):
		e.Kind = cloud.ErrInUse
	case s == http.StatusConflict:
		e.Kind = cloud.ErrBusy
	case s == http.StatusRequestEntityTooLarge:
		e.Kind = cloud.ErrQuota
	case s == http.StatusTooManyRequests:
		e.Kind = cloud.ErrUnavailable
	case s >= 500 && unsafeToRepeat(o):
		e.Kind = cloud.ErrUnknownOutcome
	case s >= 500:
		e.Kind = cloud.ErrUnavailable
	default:
		e.Kind = cloud.ErrInvalid
	}
	return e
}

// responseError finds the HTTP answer inside err (gophercloud returns it by value,
// wrapped after a re-authentication).
func responseError(err error) (gophercloud.ErrUnexpectedResponseCode, bool) {
	var rc gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &rc) {
		return rc, true
	}
	var rcp *gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &rcp) && rcp != nil {
		return *rcp, true
	}
	return rc, false
}

// faultMessage extracts the human message of an OpenStack error body:
// Nova and Cinder wrap it as {"conflictingRequest": {"code": 409, "message": ...}},
// Glance (webob) and Keystone as {"message": ...} or {"error": {"message": ...}}.
// Anything else is returned as trimmed text, cut to a sane length.
func faultMessage(body []byte) string {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) == nil {
		var msg string
		if raw, ok := top["message"]; ok && json.Unmarshal(raw, &msg) == nil && msg != "" {
			return cleanMessage(msg)
		}
		for _, raw := range top {
			var inner struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(raw, &inner) == nil && inner.Message != "" {
				return cleanMessage(inner.Message)
			}
		}
	}
	return cleanMessage(string(body))
}

func cleanMessage(s string) string {
	s = strings.ReplaceAll(s, "<br />", " ")
	s = strings.Join(strings.Fields(s), " ")
	const maxLen = 512
	if len(s) > maxLen {
		s = s[:maxLen] + "..."
	}
	return s
}
