package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Limits on the file itself, checked before anything else is done with it.
const (
	// MaxFileSize is the largest policy file accepted.
	MaxFileSize = 1 << 20
	// maxAliasExpansion bounds how many YAML nodes aliases may add when expanded,
	// which stops "billion laughs" documents while leaving room for anchors that
	// share a retention block between many policies.
	maxAliasExpansion = 10000
)

// Load reads and compiles the policy file at path. A file that cannot be read
// returns an error wrapping the os error; an invalid file returns Errors.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read policy file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policy file %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse compiles a policy file's content; filename is used in error positions and
// as Config.Path. On invalid input the error is Errors, holding every problem.
func Parse(filename string, data []byte) (*Config, error) {
	l := &loader{file: filename, nodes: map[string]*yaml.Node{}, bad: map[string]bool{}}
	if len(data) > MaxFileSize {
		l.add(&FieldError{File: filename, Msg: fmt.Sprintf("file is larger than 1 MiB (%d bytes or more); policy files must be at most %d bytes", len(data), MaxFileSize)})
		return nil, l.errs
	}
	root, ok := l.parseYAML(data)
	if !ok {
		return nil, l.finish()
	}
	l.walk(root, &configSchema, "")
	l.collectNames()
	var raw rawConfig
	if !l.strictDecode(data, &raw) || !l.aligned(&raw) {
		return nil, l.finish()
	}
	cfg := l.compile(&raw)
	if len(l.errs) > 0 {
		return nil, l.finish()
	}
	sum := sha256.Sum256(data)
	cfg.Path = filename
	cfg.Version = hex.EncodeToString(sum[:6])
	return cfg, nil
}

// loader collects the problems of one file and the YAML node of every path, so
// that checks done on decoded values can still point at a line and column.
type loader struct {
	file  string
	errs  Errors
	nodes map[string]*yaml.Node
	// bad marks paths already reported (wrong type, unknown key) so that the value
	// checks do not report them a second time.
	bad map[string]bool
	// names are the valid policy names by index, for the policy "NAME" prefix.
	names map[int]string
}

func (l *loader) add(e *FieldError) { l.errs = append(l.errs, e) }

// errorAt reports a problem at node n for the full path.
func (l *loader) errorAt(n *yaml.Node, path, format string, args ...any) {
	e := &FieldError{File: l.file, Field: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	l.bad[path] = true
	l.add(e)
}

// errorf reports a problem at the node of path, or of its nearest recorded
// ancestor when the key is missing.
func (l *loader) errorf(path, format string, args ...any) {
	l.errorAt(l.nodeOf(path), path, format, args...)
}

func (l *loader) nodeOf(path string) *yaml.Node {
	for p := path; ; {
		if n, ok := l.nodes[p]; ok {
			return n
		}
		if p == "" {
			return nil
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			p = ""
		} else {
			p = p[:i]
		}
	}
}

// finish attributes errors inside a policy to that policy by name, and sorts them
// by position.
func (l *loader) finish() Errors {
	for _, e := range l.errs {
		rest, ok := strings.CutPrefix(e.Field, "policies[")
		if !ok {
			continue
		}
		i := strings.Index(rest, "]")
		if i < 0 {
			continue
		}
		idx, err := strconv.Atoi(rest[:i])
		if err != nil {
			continue
		}
		name, ok := l.names[idx]
		if !ok {
			continue
		}
		field := strings.TrimPrefix(rest[i+1:], ".")
		if field == "" {
			continue
		}
		e.Policy, e.Field = name, field
	}
	l.errs.sort()
	return l.errs
}

var yamlLine = strings.NewReplacer("yaml: ", "")

// parseYAML parses the document into nodes and refuses what the walk cannot
// handle safely: several documents, alias cycles and alias bombs.
func (l *loader) parseYAML(data []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.add(&FieldError{File: l.file, Line: 1, Col: 1, Msg: "file is empty; it needs at least a policies list"})
			return nil, false
		}
		l.syntaxError(err)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := 0
		if err == nil && len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		l.add(&FieldError{File: l.file, Line: line, Msg: "more than one YAML document; a policy file holds exactly one"})
		return nil, false
	}
	if len(doc.Content) == 0 {
		l.add(&FieldError{File: l.file, Line: 1, Col: 1, Msg: "file is empty; it needs at least a policies list"})
		return nil, false
	}
	root := doc.Content[0]
	raw := countNodes(root)
	expanded, cycle := expandedSize(root, map[*yaml.Node]int{}, map[*yaml.Node]bool{}, raw+maxAliasExpansion)
	switch {
	case cycle != nil:
		l.add(&FieldError{File: l.file, Line: cycle.Line, Col: cycle.Column, Msg: fmt.Sprintf("alias *%s refers to a node that contains it; recursive YAML is not allowed", cycle.Value)})
		return nil, false
	case expanded > raw+maxAliasExpansion:
		l.add(&FieldError{File: l.file, Line: root.Line, Col: root.Column, Msg: fmt.Sprintf("YAML aliases expand to more than %d extra nodes; refusing the file (use fewer or smaller anchors)", maxAliasExpansion)})
		return nil, false
	}
	return root, true
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into a positioned error. The
// parser does not report a column.
func (l *loader) syntaxError(err error) {
	msg := yamlLine.Replace(err.Error())
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ": "); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil {
				line, msg = n, rest[i+2:]
			}
		}
	}
	l.add(&FieldError{File: l.file, Line: line, Msg: "invalid YAML: " + msg})
}

func countNodes(n *yaml.Node) int {
	c := 1
	for _, k := range n.Content {
		c += countNodes(k)
	}
	return c
}

// expandedSize counts nodes with aliases expanded, memoised per node so that it is
// linear in the file, stopping early past limit. It returns the alias node of a
// cycle if there is one.
func expandedSize(n *yaml.Node, memo map[*yaml.Node]int, active map[*yaml.Node]bool, limit int) (int, *yaml.Node) {
	if s, ok := memo[n]; ok {
		return s, nil
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return 1, nil
		}
		if active[n.Alias] {
			return 0, n
		}
		s, cyc := expandedSize(n.Alias, memo, active, limit)
		memo[n] = s
		return s, cyc
	}
	active[n] = true
	defer delete(active, n)
	total := 1
	for _, c := range n.Content {
		s, cyc := expandedSize(c, memo, active, limit)
		if cyc != nil {
			return 0, cyc
		}
		total += s
		if total > limit {
			break
		}
	}
	memo[n] = total
	return total, nil
}

// strictDecode decodes into the plain structs with unknown keys refused. The walk
// has already reported every problem it knows with a position; a decode error on
// a line the walk did not flag is still reported, so that nothing yaml.v3 refuses
// is ever silently accepted.
// It reports whether raw is complete enough to check values: yaml.v3 carries on
// past type errors but stops at anything else (a duplicate key, for one).
func (l *loader) strictDecode(data []byte, raw *rawConfig) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(raw)
	if err == nil {
		return true
	}
	flagged := map[int]bool{}
	for _, e := range l.errs {
		flagged[e.Line] = true
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		if len(l.errs) == 0 {
			l.syntaxError(err)
		}
		return false
	}
	for _, m := range te.Errors {
		line := 0
		if rest, ok := strings.CutPrefix(m, "line "); ok {
			if i := strings.Index(rest, ": "); i > 0 {
				if n, err := strconv.Atoi(rest[:i]); err == nil {
					line, m = n, rest[i+2:]
				}
			}
		}
		if !flagged[line] {
			l.add(&FieldError{File: l.file, Line: line, Msg: m})
		}
	}
	return true
}

// aligned reports whether raw.Policies[i] is the i-th policy of the file. yaml.v3
// drops a list element it cannot decode at all (a policy with a duplicate key),
// which would shift every later policy onto the wrong positions; the walk has
// reported why, and that report is all we give.
func (l *loader) aligned(raw *rawConfig) bool {
	list := l.nodes["policies"]
	if list == nil || list.Kind != yaml.SequenceNode {
		return len(raw.Policies) == 0
	}
	return len(raw.Policies) == len(list.Content) || len(l.errs) == 0
}

// suppressed reports whether a "required" or "empty" check at path would only
// repeat a problem already reported at path or its parent (a misspelt key, a
// value of the wrong shape).
func (l *loader) suppressed(path string) bool {
	if l.bad[path] {
		return true
	}
	if i := strings.LastIndexAny(path, ".["); i >= 0 {
		return l.bad[path[:i]]
	}
	return l.bad[""]
}

// collectNames checks every policy name and records the valid, unique ones, so
// that errors inside a policy can name it.
func (l *loader) collectNames() {
	l.names = map[int]string{}
	list := l.nodes["policies"]
	if list == nil || list.Kind != yaml.SequenceNode {
		return
	}
	first := map[string]int{}
	for i := range list.Content {
		path := fmt.Sprintf("policies[%d].name", i)
		if l.bad[path] {
			continue
		}
		n := l.nodes[path]
		name := ""
		if n != nil && !isNull(n) {
			name = n.Value
		}
		if err := checkPolicyName(name); err != nil {
			l.errorf(path, "%v", err)
			continue
		}
		if line, dup := first[name]; dup {
			l.errorf(path, "duplicate policy name %q; first used at line %d (names must be unique)", name, line)
			continue
		}
		first[name] = n.Line
		l.names[i] = name
	}
}

// The plain structs yaml.v3 decodes into. Pointers distinguish "absent" (use the
// default) from an explicit zero (check it).
type (
	rawConfig struct {
		Cloud          string      `yaml:"cloud"`
		State          *string     `yaml:"state"`
		Listen         *string     `yaml:"listen"`
		Limits         rawLimits   `yaml:"limits"`
		Defaults       rawDefaults `yaml:"defaults"`
		AllowSubMinute bool        `yaml:"allow_sub_minute"`
		// LineageRetention is a duration ("90d"); empty means the default.
		LineageRetention string      `yaml:"lineage_retention"`
		Policies         []rawPolicy `yaml:"policies"`
		// Extensions holds top-level keys starting with "x-", which are ignored:
		// a place to define YAML anchors shared by several policies.
		Extensions map[string]any `yaml:",inline"`
	}
	rawLimits struct {
		Concurrency       *int     `yaml:"concurrency"`
		RequestsPerSecond *float64 `yaml:"requests_per_second"`
	}
	rawDefaults struct {
		Timezone string `yaml:"timezone"`
	}
	rawPolicy struct {
		Name      string       `yaml:"name"`
		Enabled   *bool        `yaml:"enabled"`
		Select    rawSelect    `yaml:"select"`
		Schedule  rawSchedule  `yaml:"schedule"`
		Image     rawImage     `yaml:"image"`
		Retention rawRetention `yaml:"retention"`
		Verify    rawVerify    `yaml:"verify"`
	}
	rawVerify struct {
		Cron          string `yaml:"cron"`
		Timezone      string `yaml:"timezone"`
		Sample        *int   `yaml:"sample"`
		Flavor        string `yaml:"flavor"`
		Network       string `yaml:"network"`
		Timeout       string `yaml:"timeout"`
		ConsoleMarker string `yaml:"console_marker"`
	}
	rawSelect struct {
		Tags              []string `yaml:"tags"`
		TagsAny           []string `yaml:"tags_any"`
		ExcludeTags       []string `yaml:"exclude_tags"`
		AvailabilityZones []string `yaml:"availability_zones"`
	}
	rawSchedule struct {
		Cron        string `yaml:"cron"`
		Timezone    string `yaml:"timezone"`
		CatchUp     string `yaml:"catch_up"`
		MaxLateness string `yaml:"max_lateness"`
		Spread      string `yaml:"spread"`
	}
	rawImage struct {
		Name        string            `yaml:"name"`
		Metadata    map[string]string `yaml:"metadata"`
		WaitTimeout string            `yaml:"wait_timeout"`
		Hooks       rawHooks          `yaml:"hooks"`
	}
	rawHooks struct {
		Pre  rawHook `yaml:"pre"`
		Post rawHook `yaml:"post"`
	}
	rawHook struct {
		Command   []string `yaml:"command"`
		Timeout   string   `yaml:"timeout"`
		OnFailure string   `yaml:"on_failure"`
	}
	rawRetention struct {
		KeepLast           *int   `yaml:"keep_last"`
		KeepHourly         *int   `yaml:"keep_hourly"`
		KeepDaily          *int   `yaml:"keep_daily"`
		KeepWeekly         *int   `yaml:"keep_weekly"`
		KeepMonthly        *int   `yaml:"keep_monthly"`
		KeepYearly         *int   `yaml:"keep_yearly"`
		KeepWithin         string `yaml:"keep_within"`
		MinKeep            *int   `yaml:"min_keep"`
		WhenServerGone     string `yaml:"when_server_gone"`
		MaxDeletionsPerRun *int   `yaml:"max_deletions_per_run"`
	}
)

// kind is the YAML shape a key must have.
type kind int

const (
	kString kind = iota
	kInt
	kNumber
	kBool
	kStringList
	kStringMap
	kMapping
	kMappingList
)

// schema mirrors the raw structs; the walk checks shapes and records positions
// against it. A test keeps it and the yaml tags of the raw structs in step.
type schema struct {
	kind   kind
	fields []field
	elem   *schema
}

type field struct {
	key string
	schema
}

var hookSchema = schema{kind: kMapping, fields: []field{
	{"command", schema{kind: kStringList}},
	{"timeout", schema{kind: kString}},
	{"on_failure", schema{kind: kString}},
}}

var policySchema = schema{kind: kMapping, fields: []field{
	{"name", schema{kind: kString}},
	{"enabled", schema{kind: kBool}},
	{"select", schema{kind: kMapping, fields: []field{
		{"tags", schema{kind: kStringList}},
		{"tags_any", schema{kind: kStringList}},
		{"exclude_tags", schema{kind: kStringList}},
		{"availability_zones", schema{kind: kStringList}},
	}}},
	{"schedule", schema{kind: kMapping, fields: []field{
		{"cron", schema{kind: kString}},
		{"timezone", schema{kind: kString}},
		{"catch_up", schema{kind: kString}},
		{"max_lateness", schema{kind: kString}},
		{"spread", schema{kind: kString}},
	}}},
	{"image", schema{kind: kMapping, fields: []field{
		{"name", schema{kind: kString}},
		{"metadata", schema{kind: kStringMap}},
		{"wait_timeout", schema{kind: kString}},
		{"hooks", schema{kind: kMapping, fields: []field{
			{"pre", hookSchema},
			{"post", hookSchema},
		}}},
	}}},
	{"retention", schema{kind: kMapping, fields: []field{
		{"keep_last", schema{kind: kInt}},
		{"keep_hourly", schema{kind: kInt}},
		{"keep_daily", schema{kind: kInt}},
		{"keep_weekly", schema{kind: kInt}},
		{"keep_monthly", schema{kind: kInt}},
		{"keep_yearly", schema{kind: kInt}},
		{"keep_within", schema{kind: kString}},
		{"min_keep", schema{kind: kInt}},
		{"when_server_gone", schema{kind: kString}},
		{"max_deletions_per_run", schema{kind: kInt}},
	}}},
	{"verify", schema{kind: kMapping, fields: []field{
		{"cron", schema{kind: kString}},
		{"timezone", schema{kind: kString}},
		{"sample", schema{kind: kInt}},
		{"flavor", schema{kind: kString}},
		{"network", schema{kind: kString}},
		{"timeout", schema{kind: kString}},
		{"console_marker", schema{kind: kString}},
	}}},
}}

var configSchema = schema{kind: kMapping, fields: []field{
	{"cloud", schema{kind: kString}},
	{"state", schema{kind: kString}},
	{"listen", schema{kind: kString}},
	{"limits", schema{kind: kMapping, fields: []field{
		{"concurrency", schema{kind: kInt}},
		{"requests_per_second", schema{kind: kNumber}},
	}}},
	{"defaults", schema{kind: kMapping, fields: []field{
		{"timezone", schema{kind: kString}},
	}}},
	{"allow_sub_minute", schema{kind: kBool}},
	{"lineage_retention", schema{kind: kString}},
	{"policies", schema{kind: kMappingList, elem: &policySchema}},
}}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// mapKeyPath is the path of one entry of a free-form map such as image.metadata;
// the key is quoted because it may contain dots and spaces.
func mapKeyPath(path, key string) string { return path + "[" + strconv.Quote(key) + "]" }

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// describe names what a node is, for "got ..." in messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	v := n.Value
	if len(v) > 40 {
		v = truncate(v, 40) + "..."
	}
	switch n.ShortTag() {
	case "!!int":
		return "the integer " + v
	case "!!float":
		return "the number " + v
	case "!!bool":
		return "the boolean " + v
	case "!!null":
		return "nothing"
	}
	return strconv.Quote(v)
}

type pair struct{ key, value *yaml.Node }

// pairs lists a mapping's entries with YAML merge keys ("<<: *base") applied:
// explicit keys win over merged ones, and earlier merges over later ones, as
// yaml.v3 decodes them. Duplicate explicit keys are reported.
func (l *loader) pairs(n *yaml.Node, path string) []pair {
	var out []pair
	seen := map[string]*yaml.Node{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			l.errorAt(k, path, "keys must be plain strings, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			l.errorAt(k, join(path, k.Value), "duplicate key; first set at line %d", first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, v})
	}
	for _, m := range merges {
		m = resolve(m)
		var sources []*yaml.Node
		switch m.Kind {
		case yaml.MappingNode:
			sources = []*yaml.Node{m}
		case yaml.SequenceNode:
			for _, s := range m.Content {
				sources = append(sources, resolve(s))
			}
		}
		for _, s := range sources {
			if s.Kind != yaml.MappingNode {
				l.errorAt(s, path, "a merge key (<<) must refer to a mapping, got %s", describe(s))
				continue
			}
			for _, p := range l.pairs(s, path) {
				if _, ok := seen[p.key.Value]; ok {
					continue
				}
				seen[p.key.Value] = p.key
				out = append(out, p)
			}
		}
		if len(sources) == 0 {
			l.errorAt(m, path, "a merge key (<<) must refer to a mapping, got %s", describe(m))
		}
	}
	return out
}

// walk checks n against s, records the node of every path, and reports unknown
// keys and values of the wrong shape.
func (l *loader) walk(n *yaml.Node, s *schema, path string) {
	n = resolve(n)
	l.nodes[path] = n
	if isNull(n) {
		return
	}
	switch s.kind {
	case kString:
		if n.Kind != yaml.ScalarNode {
			l.errorAt(n, path, "must be a string, got %s", describe(n))
		}
	case kInt:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			l.errorAt(n, path, "must be an integer, got %s", describe(n))
		}
	case kNumber:
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") {
			l.errorAt(n, path, "must be a number, got %s", describe(n))
		}
	case kBool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			l.errorAt(n, path, "must be true or false, got %s", describe(n))
		}
	case kStringList:
		if n.Kind != yaml.SequenceNode {
			l.errorAt(n, path, "must be a list of strings such as [a, b], got %s", describe(n))
			return
		}
		for i, c := range n.Content {
			c = resolve(c)
			p := fmt.Sprintf("%s[%d]", path, i)
			l.nodes[p] = c
			if c.Kind != yaml.ScalarNode || isNull(c) {
				l.errorAt(c, p, "must be a string, got %s", describe(c))
			}
		}
	case kStringMap:
		if n.Kind != yaml.MappingNode {
			l.errorAt(n, path, "must be a mapping of strings to strings, got %s", describe(n))
			return
		}
		for _, p := range l.pairs(n, path) {
			kp := mapKeyPath(path, p.key.Value)
			v := resolve(p.value)
			l.nodes[kp] = v
			l.nodes[kp+"#key"] = p.key
			if v.Kind != yaml.ScalarNode {
				l.errorAt(v, kp, "must be a string, got %s", describe(v))
			}
		}
	case kMapping:
		if n.Kind != yaml.MappingNode {
			l.errorAt(n, path, "must be a mapping with the keys %s, got %s", keyList(s.fields), describe(n))
			return
		}
		for _, p := range l.pairs(n, path) {
			f := findField(s.fields, p.key.Value)
			kp := join(path, p.key.Value)
			if f == nil && path == "" && strings.HasPrefix(p.key.Value, "x-") {
				continue
			}
			if f == nil {
				l.errorAt(p.key, kp, "unknown key%s; allowed keys are %s", suggest(p.key.Value, s.fields), keyList(s.fields))
				// A misspelt key is the likely cause of "required" errors about the
				// same mapping; the typo alone is the useful message.
				l.bad[path] = true
				continue
			}
			l.walk(p.value, &f.schema, kp)
		}
	case kMappingList:
		if n.Kind != yaml.SequenceNode {
			l.errorAt(n, path, "must be a list, got %s", describe(n))
			return
		}
		for i, c := range n.Content {
			l.walk(c, s.elem, fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

func findField(fs []field, key string) *field {
	for i := range fs {
		if fs[i].key == key {
			return &fs[i]
		}
	}
	return nil
}

func keyList(fs []field) string {
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = f.key
	}
	return strings.Join(keys, ", ")
}

// suggest offers the closest allowed key for a likely typo.
func suggest(key string, fs []field) string {
	best, bestD := "", 3
	for _, f := range fs {
		if d := editDistance(strings.ToLower(key), f.key); d < bestD {
			best, bestD = f.key, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sortedKeys returns m's keys in order, so that errors come out deterministically.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
