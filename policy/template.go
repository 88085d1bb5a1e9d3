package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	ttemplate "text/template"
	"text/template/parse"
	"time"
	"unicode/utf8"
)

// Byte limits of Nova's createImage (DESIGN.md section 1) and Glance properties.
const (
	MaxImageNameBytes     = 242
	MaxMetadataKeyBytes   = 254
	MaxMetadataValueBytes = 255
	// ReservedMetadataPrefix marks the ownership stamp; policies may not set such keys.
	ReservedMetadataPrefix = "imagekeeper_"
)

// maxTemplateOutput bounds what one template and each helper may produce, so that
// a hostile or mistaken template cannot exhaust memory (printf widths, replace).
const maxTemplateOutput = 64 << 10

// ImageSpec says how a policy names its images and what metadata it puts on them.
// Name and the Metadata values are text/template sources, compiled at load time.
type ImageSpec struct {
	// Name is the image name template.
	Name string
	// Metadata maps literal keys to value templates.
	Metadata map[string]string
	// WaitTimeout is how long an image and its volume snapshots may take to become
	// usable before the image is recorded as failed.
	WaitTimeout time.Duration
	// Hooks are the commands run around the snapshot; nil when the policy has none.
	Hooks *Hooks

	name *ttemplate.Template
	meta map[string]*ttemplate.Template
}

// Render executes the name and metadata templates for one server and slot, and
// checks the results against Nova's limits: a name of 1..242 bytes without
// leading or trailing space, metadata values of at most 255 bytes. Every error
// wraps ErrTemplate.
func (s *ImageSpec) Render(d TemplateData) (name string, metadata map[string]string, err error) {
	if s.name == nil {
		// An ImageSpec built as a literal (tests in other packages): compile a copy
		// on each call rather than mutate a value that may be shared.
		c, err := s.compile()
		if err != nil {
			return "", nil, err
		}
		s = c
	}
	name, err = execute(s.name, d)
	if err != nil {
		return "", nil, fmt.Errorf("%w: name: %v", ErrTemplate, err)
	}
	if err := checkName(name); err != nil {
		return "", nil, fmt.Errorf("%w: name %q: %v", ErrTemplate, truncate(name, 80), err)
	}
	metadata = make(map[string]string, len(s.meta))
	for k, t := range s.meta {
		if err := checkMetadataKey(k); err != nil {
			return "", nil, fmt.Errorf("%w: metadata key %q: %v", ErrTemplate, k, err)
		}
		v, err := execute(t, d)
		if err != nil {
			return "", nil, fmt.Errorf("%w: metadata %q: %v", ErrTemplate, k, err)
		}
		if len(v) > MaxMetadataValueBytes {
			return "", nil, fmt.Errorf("%w: metadata %q: rendered value is %d bytes; at most %d allowed", ErrTemplate, k, len(v), MaxMetadataValueBytes)
		}
		metadata[k] = v
	}
	return name, metadata, nil
}

func (s *ImageSpec) compile() (*ImageSpec, error) {
	c := &ImageSpec{Name: s.Name, Metadata: s.Metadata, WaitTimeout: s.WaitTimeout, meta: map[string]*ttemplate.Template{}}
	var err error
	if c.name, err = parseTemplate(s.Name); err != nil {
		return nil, fmt.Errorf("%w: name: %v", ErrTemplate, err)
	}
	for k, src := range s.Metadata {
		if c.meta[k], err = parseTemplate(src); err != nil {
			return nil, fmt.Errorf("%w: metadata %q: %v", ErrTemplate, k, err)
		}
	}
	return c, nil
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("rendered name is empty; it must be 1..242 bytes")
	case len(name) > MaxImageNameBytes:
		return fmt.Errorf("rendered name is %d bytes; at most %d allowed (shorten it with trunc)", len(name), MaxImageNameBytes)
	case strings.TrimSpace(name) != name:
		return errors.New("rendered name has leading or trailing white space, which Nova refuses")
	case !utf8.ValidString(name):
		return errors.New("rendered name is not valid UTF-8")
	}
	return nil
}

var metadataKeyRE = regexp.MustCompile(`^[A-Za-z0-9_:. -]+$`)

// reservedMetadataKeys are Glance's core and reserved image attributes and the
// properties Nova writes on a snapshot itself. Sent as createImage metadata they
// would be refused (a 400 for the whole image), silently overridden, or worse:
// visibility: public would publish every backup to the whole cloud.
var reservedMetadataKeys = map[string]string{
	"id": "Glance", "name": "Glance", "status": "Glance", "visibility": "Glance", "protected": "Glance",
	"owner": "Glance", "checksum": "Glance", "size": "Glance", "virtual_size": "Glance",
	"container_format": "Glance", "disk_format": "Glance", "created_at": "Glance", "updated_at": "Glance",
	"tags": "Glance", "locations": "Glance", "direct_url": "Glance", "self": "Glance", "file": "Glance",
	"schema": "Glance", "min_disk": "Glance", "min_ram": "Glance", "os_hidden": "Glance",
	"os_hash_algo": "Glance", "os_hash_value": "Glance", "deleted": "Glance", "deleted_at": "Glance",
	"instance_uuid": "Nova", "block_device_mapping": "Nova", "bdm_v2": "Nova", "root_device_name": "Nova",
	"image_type": "Nova", "base_image_ref": "Nova", "owner_project_name": "Nova", "owner_user_name": "Nova",
	"user_id": "Nova", "boot_roles": "Nova",
}

// reservedGlancePrefix marks Glance's own reserved properties (os_glance_import_task...).
const reservedGlancePrefix = "os_glance_"

func checkMetadataKey(k string) error {
	switch {
	case k == "":
		return errors.New("must not be empty")
	case len(k) > MaxMetadataKeyBytes:
		return fmt.Errorf("is %d bytes; at most %d allowed", len(k), MaxMetadataKeyBytes)
	case !metadataKeyRE.MatchString(k):
		return errors.New("may contain only letters, digits, space and - _ : .")
	case strings.HasPrefix(strings.ToLower(k), ReservedMetadataPrefix):
		return fmt.Errorf("the %s prefix is reserved for imagekeeper's ownership stamp", ReservedMetadataPrefix)
	case strings.HasPrefix(strings.ToLower(k), reservedGlancePrefix):
		return fmt.Errorf("the %s prefix is reserved by Glance", reservedGlancePrefix)
	}
	if who, ok := reservedMetadataKeys[strings.ToLower(k)]; ok {
		if who == "Nova" {
			return errors.New("Nova writes this property on every snapshot itself")
		}
		return errors.New("a Glance core or reserved image attribute, not a property an image may be given")
	}
	return nil
}

// limitedWriter fails once more than maxTemplateOutput bytes are written.
type limitedWriter struct{ bytes.Buffer }

var errOutputTooLarge = fmt.Errorf("output exceeds %d bytes", maxTemplateOutput)

func (w *limitedWriter) Write(p []byte) (int, error) {
	if w.Len()+len(p) > maxTemplateOutput {
		return 0, errOutputTooLarge
	}
	return w.Buffer.Write(p)
}

func execute(t *ttemplate.Template, d TemplateData) (string, error) {
	var w limitedWriter
	if err := t.Execute(&w, d); err != nil {
		// text/template errors start with "template: NAME:1:2: executing ..."; the
		// position is of the template, which the caller already names.
		return "", cleanTemplateError(err)
	}
	return w.String(), nil
}

// templatePrefix matches text/template's own position prefix; the caller names
// the YAML position, which is what a reader can act on.
var templatePrefix = regexp.MustCompile(`^template: t:[0-9:]*:? ?(executing "t" at )?`)

func cleanTemplateError(err error) error {
	return errors.New(templatePrefix.ReplaceAllString(err.Error(), ""))
}

// bounded fails a helper whose result would exceed the output bound.
func bounded(s string) (string, error) {
	if len(s) > maxTemplateOutput {
		return "", errOutputTooLarge
	}
	return s, nil
}

// funcs is the documented helper set (README.md, "The policy file"). Arguments come
// first and the piped value last, so that helpers read well in pipelines:
// {{ .Server.Name | lower | trunc 40 }}. The printing builtins are replaced by
// bounded versions of themselves.
var funcs = ttemplate.FuncMap{
	"lower": strings.ToLower,
	"upper": strings.ToUpper,
	"replace": func(old, new, s string) (string, error) {
		if n := strings.Count(s, old); n > 0 && len(new) > len(old) && len(s)+n*(len(new)-len(old)) > maxTemplateOutput {
			return "", errOutputTooLarge
		}
		return strings.ReplaceAll(s, old, new), nil
	},
	"trunc": func(n int, s string) (string, error) {
		if n < 0 {
			return "", fmt.Errorf("trunc: negative length %d", n)
		}
		return truncate(s, n), nil
	},
	"default": func(def, s string) string {
		if s == "" {
			return def
		}
		return s
	},
	"slug": slug,
	"join": func(sep string, list []string) (string, error) {
		return bounded(strings.Join(list, sep))
	},
	"printf": func(format string, args ...any) (string, error) {
		if len(format) > maxTemplateOutput {
			return "", errOutputTooLarge
		}
		return bounded(fmt.Sprintf(format, args...))
	},
	"print":    func(args ...any) (string, error) { return bounded(fmt.Sprint(args...)) },
	"println":  func(args ...any) (string, error) { return bounded(fmt.Sprintln(args...)) },
	"html":     func(args ...any) (string, error) { return bounded(ttemplate.HTMLEscaper(args...)) },
	"js":       func(args ...any) (string, error) { return bounded(ttemplate.JSEscaper(args...)) },
	"urlquery": func(args ...any) (string, error) { return bounded(url.QueryEscape(fmt.Sprint(args...))) },
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// slug lowercases s and turns every run of characters other than a-z and 0-9 into
// one "-", without a leading or trailing "-": "Web 01 (Prod)" becomes "web-01-prod".
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
			continue
		}
		dash = true
	}
	return b.String()
}

// parseTemplate compiles one template source and refuses the constructs that
// could make rendering unbounded: define/template/block, and range over a number
// or nested inside another range.
func parseTemplate(src string) (*ttemplate.Template, error) {
	t, err := ttemplate.New("t").Option("missingkey=zero").Funcs(funcs).Parse(src)
	if err != nil {
		return nil, cleanTemplateError(err)
	}
	if len(t.Templates()) > 1 {
		return nil, errors.New("define and block are not allowed in image templates")
	}
	if err := checkNodes(t.Tree.Root, 0); err != nil {
		return nil, err
	}
	return t, nil
}

func checkNodes(n parse.Node, ranges int) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := checkNodes(c, ranges); err != nil {
				return err
			}
		}
	case *parse.TemplateNode:
		return errors.New("{{template}} is not allowed in image templates")
	case *parse.IfNode:
		return checkBranch(&n.BranchNode, ranges)
	case *parse.WithNode:
		return checkBranch(&n.BranchNode, ranges)
	case *parse.RangeNode:
		if ranges > 0 {
			return errors.New("nested range is not allowed in image templates")
		}
		if hasNumber(n.Pipe) {
			return errors.New("range over a number is not allowed in image templates")
		}
		return checkBranch(&n.BranchNode, ranges+1)
	}
	return nil
}

func checkBranch(b *parse.BranchNode, ranges int) error {
	if err := checkNodes(b.List, ranges); err != nil {
		return err
	}
	if b.ElseList != nil {
		return checkNodes(b.ElseList, ranges)
	}
	return nil
}

func hasNumber(p *parse.PipeNode) bool {
	if p == nil {
		return false
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			switch a := a.(type) {
			case *parse.NumberNode:
				return true
			case *parse.PipeNode:
				if hasNumber(a) {
					return true
				}
			}
		}
	}
	return false
}
