package openstack

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// ListServers lists servers with Nova's tag filters (tags = all of, tags-any = any
// of, not-tags-any = none of), follows every page, and re-checks each server with
// sel.Matches; availability zones are filtered here because Nova only lets admins
// filter on them before 2.82.
func (c *Client) ListServers(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error) {
	ctx, cancel := c.callContext(ctx, opListServers.service, opListServers.name)
	defer cancel()
	wantTags := len(sel.Tags)+len(sel.TagsAny)+len(sel.ExcludeTags) > 0
	if wantTags && !atLeast(c.mvMajor, c.mvMinor, 2, 26) {
		return nil, &cloud.Error{Op: opListServers.desc, Kind: cloud.ErrInvalid,
			Reason: fmt.Sprintf("compute microversion %s is below %s: Nova would ignore the tag filters", c.microversion, MinMicroversion)}
	}
	for _, list := range [][]string{sel.Tags, sel.TagsAny, sel.ExcludeTags} {
		for _, t := range list {
			if t == "" || strings.Contains(t, ",") {
				return nil, &cloud.Error{Op: opListServers.desc, Kind: cloud.ErrInvalid,
					Reason: fmt.Sprintf("tag %q: Nova tags are non-empty and cannot contain a comma", t)}
			}
		}
	}
	opts := servers.ListOpts{
		Tags:       strings.Join(sel.Tags, ","),
		TagsAny:    strings.Join(sel.TagsAny, ","),
		NotTagsAny: strings.Join(sel.ExcludeTags, ","),
		Limit:      c.pageSize,
	}
	var out []cloud.Server
	err := servers.List(c.compute, opts).EachPage(ctx, func(_ context.Context, page pagination.Page) (bool, error) {
		list, err := servers.ExtractServers(page)
		if err != nil {
			return false, err
		}
		for i := range list {
			s := &list[i]
			if wantTags && s.Tags == nil {
				// The answer has no tags field: something between us and Nova
				// dropped the microversion, so the filters were ignored too.
				return false, &cloud.Error{Op: opListServers.desc, Kind: cloud.ErrInvalid,
					Reason: "the server list carries no tags (microversion below 2.26 in effect): refusing unfiltered results"}
			}
			srv := toServer(s)
			if sel.Matches(srv.Tags, srv.AvailabilityZone) {
				out = append(out, srv)
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, classify(opListServers, "", err)
	}
	return out, nil
}

// GetServer returns one server.
func (c *Client) GetServer(ctx context.Context, id string) (cloud.Server, error) {
	ctx, cancel := c.callContext(ctx, opGetServer.service, opGetServer.name)
	defer cancel()
	s, err := servers.Get(ctx, c.compute, id).Extract()
	if err != nil {
		return cloud.Server{}, classify(opGetServer, id, err)
	}
	return toServer(s), nil
}

func toServer(s *servers.Server) cloud.Server {
	out := cloud.Server{
		ID:               s.ID,
		Name:             s.Name,
		Status:           s.Status,
		TaskState:        s.TaskState,
		Locked:           s.Locked != nil && *s.Locked,
		AvailabilityZone: s.AvailabilityZone,
		Metadata:         s.Metadata,
		// Nova reports "image": "" for a server booted from a volume, which
		// gophercloud turns into nil.
		VolumeBacked: s.Image == nil,
		Fault:        s.Fault.Message,
	}
	if id, ok := s.Image["id"].(string); ok {
		out.ImageID = id
	}
	// Below 2.47 the flavor is a link with an id; from 2.47 on an embedded copy
	// whose original_name is the flavor's name.
	if id, ok := s.Flavor["id"].(string); ok {
		out.Flavor = id
	} else if n, ok := s.Flavor["original_name"].(string); ok {
		out.Flavor = n
	}
	for _, v := range s.AttachedVolumes {
		out.VolumeIDs = append(out.VolumeIDs, v.ID)
	}
	if s.Tags != nil {
		out.Tags = append([]string{}, (*s.Tags)...)
	}
	return out
}

// CreateImage calls Nova's createImage action once. It is not retried after the
// request may have reached Nova: a timeout, a reset, a 5xx or a 202 without a
// readable image id are all cloud.ErrUnknownOutcome, and the caller must look for
// its stamped image before it calls again.
func (c *Client) CreateImage(ctx context.Context, serverID, name string, metadata map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(withOp(ctx, opCreateImage.service, opCreateImage.name), c.createTimeout)
	defer cancel()
	body, err := servers.CreateImageOpts{Name: name, Metadata: metadata}.ToServerCreateImageMap()
	if err != nil {
		return "", &cloud.Error{Op: opCreateImage.desc, ID: serverID, Kind: cloud.ErrInvalid, Err: err}
	}
	// servers.CreateImage only keeps the body when Content-Type is exactly
	// "application/json" and then returns an empty id with a nil error, so the
	// request is made here and the body always kept.
	resp, err := c.compute.Post(ctx, c.compute.ServiceURL("servers", serverID, "action"), body, nil,
		&gophercloud.RequestOpts{OkCodes: []int{http.StatusAccepted}, KeepResponseBody: true})
	if err != nil {
		return "", classify(opCreateImage, serverID, err)
	}
	defer resp.Body.Close()
	raw, err := readLimited(resp.Body, 1<<20)
	if err != nil {
		return "", &cloud.Error{Op: opCreateImage.desc, ID: serverID, Status: resp.StatusCode,
			Kind: cloud.ErrUnknownOutcome, Reason: "accepted, but the answer could not be read", Err: err}
	}
	id, err := c.imageID(resp.Header, raw)
	if err != nil || id == "" {
		reason := "accepted, but the answer carries no image id"
		if err != nil {
			reason += ": " + err.Error()
		}
		return "", &cloud.Error{Op: opCreateImage.desc, ID: serverID, Status: resp.StatusCode,
			Kind: cloud.ErrUnknownOutcome, Reason: reason}
	}
	return id, nil
}

// imageID reads the new image id with gophercloud's ExtractImageID: from the
// Location header below 2.45, from the body from 2.45 on. When a proxy dropped the
// microversion header, the version we asked for is assumed.
func (c *Client) imageID(h http.Header, body []byte) (string, error) {
	h = h.Clone()
	if h.Get("X-OpenStack-Nova-API-Version") == "" {
		h.Set("X-OpenStack-Nova-API-Version", c.microversion)
	}
	r := servers.CreateImageResult{}
	r.Header = h
	if len(bytes.TrimSpace(body)) > 0 {
		r.Body = bytes.NewReader(body)
	}
	return r.ExtractImageID()
}
