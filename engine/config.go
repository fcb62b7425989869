package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultPath is the PATH a program gets when neither the image nor the
// request sets one, as docker, podman and containerd do.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Errors of MergeConfig callers may branch on.
var (
	// ErrNoCommand means the image has no entrypoint or cmd and the request
	// gave no command.
	ErrNoCommand = errors.New("no command: the image has no entrypoint or cmd, and none was given")
	// ErrUnknownUser means a user or group name is not in the image's
	// /etc/passwd or /etc/group.
	ErrUnknownUser = errors.New("unknown user or group")
)

// Overrides are what a run request changes of the image's config, with
// docker run's meaning.
type Overrides struct {
	// Entrypoint, when not nil, replaces the image's entrypoint and drops
	// its cmd (docker run --entrypoint); an empty, non-nil slice clears
	// the entrypoint.
	Entrypoint []string
	// Cmd, when not empty, replaces the image's cmd (the arguments after
	// the image in docker run).
	Cmd []string
	// Env entries ("K=V") are added to the image's, replacing those with
	// the same name.
	Env []string
	// ReplaceEnv makes Env the whole environment instead: the image's is
	// dropped (the Program Explorer API's rule for a non-null env). PATH
	// and HOME defaults are still added when missing.
	ReplaceEnv bool
	// KeepImageCmd keeps the image's cmd when Entrypoint replaces the
	// entrypoint and Cmd is empty (the Program Explorer API's rule: each
	// field replaces only its own part of the image's config).
	KeepImageCmd bool
	// Workdir, when set, replaces the image's working directory. It must
	// be absolute.
	Workdir string
	// User, when set, replaces the image's user: "name", "uid",
	// "name:group", "uid:gid" (and mixes).
	User string
}

// Process is a program ready to run: the image's config merged with the
// request's overrides, the user resolved to numeric IDs.
type Process struct {
	Argv   []string
	Env    []string
	Cwd    string
	UID    uint32
	GID    uint32
	Groups []uint32
}

// MergeConfig merges the image config cfg (nil for none) with o, the OCI
// way docker run does:
//
//   - argv is the entrypoint followed by the cmd; o.Entrypoint replaces
//     the entrypoint and clears the image's cmd; o.Cmd replaces the cmd;
//   - the environment is the image's with o.Env's entries replacing or
//     added, PATH set to DefaultPath when neither sets it, and HOME to the
//     user's home directory (or "/") when neither sets it;
//   - the working directory is o.Workdir, else the image's, else "/";
//   - the user is o.User, else the image's, else root; names are looked
//     up in rootfs's /etc/passwd and /etc/group; a user found there gets
//     its primary group and, with no explicit group, the supplementary
//     groups that list it.
//
// rootfs is the image's root file system; it may be nil when the image has
// no /etc/passwd to consult (numeric users still work).
func MergeConfig(cfg *v1.Config, o Overrides, rootfs fs.FS) (*Process, error) {
	var img v1.Config
	if cfg != nil {
		img = *cfg
	}
	p := &Process{}
	var err error
	if p.Argv, p.Cwd, err = mergeCommand(&img, o); err != nil {
		return nil, err
	}

	baseEnv := img.Env
	if o.ReplaceEnv {
		baseEnv = nil
	}
	env, err := mergeEnv(baseEnv, o.Env)
	if err != nil {
		return nil, err
	}

	user := img.User
	if o.User != "" {
		user = o.User
	}
	u, err := lookupUser(user, rootfs)
	if err != nil {
		return nil, err
	}
	p.UID, p.GID, p.Groups = u.uid, u.gid, u.groups
	if !hasEnv(env, "PATH") {
		env = append([]string{"PATH=" + DefaultPath}, env...)
	}
	if !hasEnv(env, "HOME") {
		home := u.home
		if home == "" {
			home = "/"
		}
		env = append(env, "HOME="+home)
	}
	p.Env = env
	return p, nil
}

// mergeEnv returns base with the entries of over replacing those of the
// same name, in base's order, new names appended.
func mergeEnv(base, over []string) ([]string, error) {
	var out []string
	index := map[string]int{}
	add := func(kv string, from string) error {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("environment variable %q from %s: want NAME=VALUE", kv, from)
		}
		if i, ok := index[k]; ok {
			out[i] = kv
			return nil
		}
		index[k] = len(out)
		out = append(out, kv)
		return nil
	}
	for _, kv := range base {
		if err := add(kv, "the image"); err != nil {
			return nil, err
		}
	}
	for _, kv := range over {
		if err := add(kv, "the request"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == name {
			return true
		}
	}
	return false
}

// execUser is a resolved user.
type execUser struct {
	uid, gid uint32
	groups   []uint32
	home     string
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// lookupUser resolves spec ("user[:group]", names or numbers; "" is root)
// against rootfs's /etc/passwd and /etc/group.
func lookupUser(spec string, rootfs fs.FS) (*execUser, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if hasGroup && groupPart == "" {
		return nil, fmt.Errorf("user %q: empty group", spec)
	}
	if userPart == "" {
		if spec != "" && !hasGroup {
			return nil, fmt.Errorf("user %q: empty user", spec)
		}
		userPart = "0"
	}
	var passwd []passwdEntry
	var group []groupEntry
	var perr, gerr error
	if rootfs != nil {
		passwd, perr = readPasswd(rootfs)
		group, gerr = readGroup(rootfs)
	}

	u := &execUser{}
	var matched *passwdEntry
	if id, ok := parseID(userPart); ok {
		u.uid = id
		for i := range passwd {
			if passwd[i].uid == id {
				matched = &passwd[i]
				break
			}
		}
	} else {
		if rootfs == nil || perr != nil {
			return nil, fmt.Errorf("user %q: %w: the image has no readable /etc/passwd (%v)", userPart, ErrUnknownUser, orNone(perr))
		}
		for i := range passwd {
			if passwd[i].name == userPart {
				matched = &passwd[i]
				break
			}
		}
		if matched == nil {
			return nil, fmt.Errorf("user %q: %w: not in the image's /etc/passwd", userPart, ErrUnknownUser)
		}
		u.uid = matched.uid
	}
	if matched != nil {
		u.gid, u.home = matched.gid, matched.home
	}

	if hasGroup {
		if id, ok := parseID(groupPart); ok {
			u.gid = id
		} else {
			if rootfs == nil || gerr != nil {
				return nil, fmt.Errorf("group %q: %w: the image has no readable /etc/group (%v)", groupPart, ErrUnknownUser, orNone(gerr))
			}
			found := false
			for _, g := range group {
				if g.name == groupPart {
					u.gid, found = g.gid, true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("group %q: %w: not in the image's /etc/group", groupPart, ErrUnknownUser)
			}
		}
	} else if matched != nil && matched.name != "" {
		for _, g := range group {
			for _, m := range g.members {
				if m == matched.name && g.gid != u.gid && !containsID(u.groups, g.gid) {
					u.groups = append(u.groups, g.gid)
				}
			}
		}
	}
	return u, nil
}

func orNone(err error) error {
	if err == nil {
		return errors.New("none")
	}
	return err
}

func containsID(ids []uint32, id uint32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// parseID parses a numeric user or group ID.
func parseID(s string) (uint32, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false
	}
	return uint32(n), true
}

// maxIDFile caps how much of /etc/passwd or /etc/group is read.
const maxIDFile = 4 << 20

func readIDFile(rootfs fs.FS, name string) ([][]string, error) {
	f, err := rootfs.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxIDFile {
		return nil, fmt.Errorf("/%s is %d bytes, over the %d pe reads", name, fi.Size(), maxIDFile)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		return nil, err
	}
	var rows [][]string
	sc := bufio.NewScanner(&b)
	sc.Buffer(nil, maxIDFile)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rows = append(rows, strings.Split(line, ":"))
	}
	return rows, sc.Err()
}

// readPasswd parses /etc/passwd, skipping malformed lines as libc does.
func readPasswd(rootfs fs.FS) ([]passwdEntry, error) {
	rows, err := readIDFile(rootfs, "etc/passwd")
	if err != nil {
		return nil, err
	}
	var out []passwdEntry
	for _, r := range rows {
		if len(r) < 4 {
			continue
		}
		uid, ok1 := parseID(r[2])
		gid, ok2 := parseID(r[3])
		if !ok1 || !ok2 {
			continue
		}
		e := passwdEntry{name: r[0], uid: uid, gid: gid}
		if len(r) > 5 {
			e.home = r[5]
		}
		out = append(out, e)
	}
	return out, nil
}

// readGroup parses /etc/group, skipping malformed lines.
func readGroup(rootfs fs.FS) ([]groupEntry, error) {
	rows, err := readIDFile(rootfs, "etc/group")
	if err != nil {
		return nil, err
	}
	var out []groupEntry
	for _, r := range rows {
		if len(r) < 3 {
			continue
		}
		gid, ok := parseID(r[2])
		if !ok {
			continue
		}
		e := groupEntry{name: r[0], gid: gid}
		if len(r) > 3 && r[3] != "" {
			for _, m := range strings.Split(r[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					e.members = append(e.members, m)
				}
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// mergeCommand returns the argv and working directory of the program the
// image's config img and o describe (MergeConfig's first two rules),
// which need nothing of the image's files.
func mergeCommand(img *v1.Config, o Overrides) (argv []string, cwd string, err error) {
	entrypoint, cmd := img.Entrypoint, img.Cmd
	if o.Entrypoint != nil {
		entrypoint = o.Entrypoint
		if !o.KeepImageCmd {
			cmd = nil
		}
	}
	if len(o.Cmd) > 0 {
		cmd = o.Cmd
	}
	argv = append(append([]string{}, entrypoint...), cmd...)
	if len(argv) == 0 {
		return nil, "", ErrNoCommand
	}
	cwd = "/"
	if img.WorkingDir != "" {
		cwd = path.Clean("/" + img.WorkingDir)
	}
	if o.Workdir != "" {
		if !path.IsAbs(o.Workdir) {
			return nil, "", fmt.Errorf("working directory %q: want an absolute path", o.Workdir)
		}
		cwd = path.Clean(o.Workdir)
	}
	return argv, cwd, nil
}
