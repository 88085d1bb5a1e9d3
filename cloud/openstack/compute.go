package openstack

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"

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
	query, err := opts.ToServerListQuery()
	if err != nil {
		return nil, classify(opListServers, "", err)
	}
	var out []cloud.Server
	// Each page is decoded once, straight into the fields imagekeeper reads:
	// gophercloud's pager decodes a page into a map, and ExtractServers encodes
	// that and decodes it again into full Server structs (addresses, flavor,
	// links...): at 10,000 servers that was most of a listing's CPU and memory.
	for url := c.compute.ServiceURL("servers", "detail") + query; url != ""; {
		var page leanServerPage
		if _, err := c.compute.Get(ctx, url, &page, &gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}}); err != nil {
			return nil, classify(opListServers, "", err)
		}
		for i := range page.Servers {
			s := &page.Servers[i]
			if wantTags && s.Tags == nil {
				// The answer has no tags field: something between us and Nova
				// dropped the microversion, so the filters were ignored too.
				return nil, &cloud.Error{Op: opListServers.desc, Kind: cloud.ErrInvalid,
					Reason: "the server list carries no tags (microversion below 2.26 in effect): refusing unfiltered results"}
			}
			srv := s.toServer()
			if sel.Matches(srv.Tags, srv.AvailabilityZone) {
				out = append(out, srv)
			}
		}
		url = ""
		if len(page.Servers) > 0 {
			for _, l := range page.Links {
				if l.Rel == "next" {
					url = l.Href
				}
			}
		}
	}
	return out, nil
}

// leanServerPage is one page of GET /servers/detail with only what toServer reads.
type leanServerPage struct {
	Servers []leanServer `json:"servers"`
	Links   []struct {
		Href string `json:"href"`
		Rel  string `json:"rel"`
	} `json:"servers_links"`
}

type leanServer struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Status    string            `json:"status"`
	TaskState *string           `json:"OS-EXT-STS:task_state"`
	Locked    *bool             `json:"locked"`
	AZ        string            `json:"OS-EXT-AZ:availability_zone"`
	Tags      *[]string         `json:"tags"`
	Metadata  map[string]string `json:"metadata"`
	Fault     struct {
		Message string `json:"message"`
	} `json:"fault"`
	// Image is {"id": ...} for a server booted from an image and "" for one
	// booted from a volume.
	Image json.RawMessage `json:"image"`
	// Flavor is {"id": ...} below microversion 2.47, {"original_name": ...} from
	// 2.47 on.
	Flavor struct {
		ID           string `json:"id"`
		OriginalName string `json:"original_name"`
	} `json:"flavor"`
	Volumes []struct {
		ID string `json:"id"`
	} `json:"os-extended-volumes:volumes_attached"`
}

// toServer is toServer of a lean page entry; TestListServersLeanDecodeMatchesGet
// holds the two to the same answer.
func (s *leanServer) toServer() cloud.Server {
	out := cloud.Server{ID: s.ID, Name: s.Name, Status: s.Status, AvailabilityZone: s.AZ, Metadata: s.Metadata,
		Locked: s.Locked != nil && *s.Locked, Fault: s.Fault.Message, Flavor: cmp.Or(s.Flavor.ID, s.Flavor.OriginalName)}
	if s.TaskState != nil {
		out.TaskState = *s.TaskState
	}
	// As gophercloud reads it: only an object names an image; "", null or nothing
	// is a server booted from a volume.
	img := bytes.TrimSpace(s.Image)
	out.VolumeBacked = len(img) == 0 || img[0] != '{'
	if !out.VolumeBacked {
		var ref struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(img, &ref) == nil {
			out.ImageID = ref.ID
		}
	}
	for _, v := range s.Volumes {
		out.VolumeIDs = append(out.VolumeIDs, v.ID)
	}
	if s.Tags != nil {
		out.Tags = append([]string{}, (*s.Tags)...)
	}
	return out
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
