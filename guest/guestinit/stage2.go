package guestinit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"github.com/pe-project/pe/guest/seccomp"
	"golang.org/x/sys/unix"
)

// Stage2Arg is the argv[1] that makes the init binary run as the sandbox's
// stage-2 child. It carries no secret: the configuration comes on fd 3 from
// the init, and the child can do nothing the namespaces it was born in do
// not allow.
const Stage2Arg = "__pe_stage2"

// defaultPath is the PATH searched when the program's environment has none
// (the host normally adds it, as docker does).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// devices are the nodes of the program's /dev, bound from the init's.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// stage2Error carries the exit code the failure maps to.
type stage2Error struct {
	code int
	msg  string
}

func (e *stage2Error) Error() string { return e.msg }

func setupErr(format string, args ...any) error {
	return &stage2Error{ExitSetupFailed, fmt.Sprintf(format, args...)}
}

// Stage2 is the stage-2 child: it sets up the program's mount namespace and
// credentials and executes the program. It never returns.
func Stage2() {
	// Mount namespace, root and working directory become per-thread below:
	// everything up to the exec must run on this thread.
	runtime.LockOSThread()
	unix.CloseOnExec(3)
	unix.CloseOnExec(4)
	err := stage2()
	code := ExitSetupFailed
	var se *stage2Error
	if errors.As(err, &se) {
		code = se.code
	}
	msg := err.Error()
	fmt.Fprintf(os.Stderr, "pe: %s\n", msg)
	if b, jerr := json.Marshal(stage2Failure{Code: code, Message: msg}); jerr == nil {
		unix.Write(4, b)
	}
	os.Exit(code)
}

// stage2 runs the child's two halves: the program's mount namespace from
// the setup, then, once the configuration comes, the program.
func stage2() error {
	// What decoding the two messages builds on first use (encoding/json's
	// field lists, by reflection) is built now, while a snapshot can
	// still keep it: a boot snapshot holds this child waiting for its
	// setup, an image's snapshot waiting for its configuration (see
	// warmCodecs).
	json.Unmarshal([]byte(`{"root":"/r","proc":"/r/proc","dev":"/r/dev","dev_dir":"/dev","shm_size":1}`), new(stage2Setup))
	json.Unmarshal([]byte(`{"argv":["true"],"groups":[1]}`), new(stage2Config))
	var setup stage2Setup
	cfgFile := os.NewFile(3, "config")
	dec := json.NewDecoder(cfgFile)
	if err := dec.Decode(&setup); err != nil {
		return setupErr("sandbox: read the setup: %v", err)
	}
	if err := enterRoot(&setup); err != nil {
		return err
	}
	if _, err := unix.Write(4, []byte{stage2Ready}); err != nil {
		return setupErr("sandbox: report ready: %v", err)
	}

	// Ready: a snapshot may be taken here, and the program comes later.
	var cfg stage2Config
	if err := dec.Decode(&cfg); err != nil {
		return setupErr("sandbox: read configuration: %v", err)
	}
	cfgFile.Close()
	if err := configureChild(&setup, &cfg); err != nil {
		return err
	}
	return execAs(&cfg)
}

// enterRoot makes the program's mount namespace, mounts its /proc and
// /dev and pivots into the container root.
func enterRoot(setup *stage2Setup) error {
	// The init runs with oom_score_adj -1000, which the program must not
	// inherit: the OOM killer would have nothing to kill in its cgroup.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("0"), 0); err != nil {
		return setupErr("sandbox: oom_score_adj: %v", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return setupErr("sandbox: new mount namespace: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return setupErr("sandbox: make mounts private: %v", err)
	}
	if err := mountProcDev(setup); err != nil {
		return err
	}
	// The root came from the init's namespace, so it is locked here and
	// pivot_root refuses it; a recursive bind onto itself is our own mount.
	if err := unix.Mount(setup.Root, setup.Root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return setupErr("sandbox: bind the root: %v", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching it
	// leaves nothing of the init's tree reachable.
	if err := unix.Chdir(setup.Root); err != nil {
		return setupErr("sandbox: %v", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return setupErr("sandbox: pivot_root: %v", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return setupErr("sandbox: detach the old root: %v", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return setupErr("sandbox: %v", err)
	}
	return nil
}

// configureChild applies what the configuration changes of the setup:
// /dev/shm's size, the hostname, standard input, the terminal.
func configureChild(setup *stage2Setup, cfg *stage2Config) error {
	if cfg.ShmSize != setup.ShmSize && cfg.ShmSize > 0 {
		if err := unix.Mount("", "/dev/shm", "", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size="+itoa(cfg.ShmSize)); err != nil {
			return setupErr("sandbox: resize /dev/shm: %v", err)
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return setupErr("sandbox: hostname: %v", err)
	}
	if cfg.TTY != "" {
		if err := attachTTY(cfg.TTY); err != nil {
			return err
		}
	}
	if cfg.NullStdin {
		// The program's /dev/null, bound from the init's.
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return setupErr("sandbox: /dev/null: %v", err)
		}
		err = unix.Dup3(fd, 0, 0)
		unix.Close(fd)
		if err != nil {
			return setupErr("sandbox: standard input: %v", err)
		}
	}
	return nil
}

// execAs puts the seccomp filter on, drops to the program's user and
// executes the program. It returns only on failure.
func execAs(cfg *stage2Config) error {
	env := cfg.Env
	if lookupEnv(env, "HOME") == "" {
		env = append(env, "HOME="+homeDir(cfg.UID))
	}
	// Docker's default seccomp profile (package seccomp), on this thread
	// and so on the program: pe's own setup is done, and what is left
	// (credentials, chdir, exec) is allowed by it. Put on while the thread
	// holds CAP_SYS_ADMIN in its user namespace, without no_new_privs, as
	// runc does under docker: setuid programs work as under docker run.
	if err := seccomp.Load(); err != nil {
		return setupErr("sandbox: %v", err)
	}
	// Credentials are per thread in Linux, and execve takes the calling
	// thread's (the others end with it). The syscall package's Setuid and
	// friends change every thread, signalling each: work a restored VM
	// pays for in emulation, and the program never sees those threads.
	if err := setThreadCreds(cfg.UID, cfg.GID, cfg.Groups); err != nil {
		return err
	}
	if err := unix.Chdir(cfg.Cwd); err != nil {
		return setupErr("working directory %s: %v", cfg.Cwd, err)
	}
	return execProgram(cfg.Argv, env)
}

// mountProcDev mounts the program's /proc (of its PID namespace) and a
// fresh /dev holding only harmless devices. Both happen before pivot_root,
// while the init's /proc is still visible: the kernel only lets a user
// namespace mount proc where a full proc is already mounted.
func mountProcDev(cfg *stage2Setup) error {
	if err := unix.Mount("proc", cfg.Proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return setupErr("sandbox: mount /proc: %v", err)
	}
	dev := cfg.Dev
	// nodev on the tmpfs too: only the nodes bound over its files, each
	// its own mount, and devpts are devices.
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return setupErr("sandbox: mount /dev: %v", err)
	}
	for _, d := range devices {
		p := filepath.Join(dev, d)
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return setupErr("sandbox: /dev/%s: %v", d, err)
		}
		f.Close()
		// A bind mount of the init's node: a user namespace cannot mknod,
		// and its own tmpfs would not honour device nodes anyway.
		if err := unix.Mount(filepath.Join(cfg.DevDir, d), p, "", unix.MS_BIND, ""); err != nil {
			return setupErr("sandbox: bind /dev/%s: %v", d, err)
		}
	}
	for _, m := range devMounts(cfg.ShmSize) {
		if err := os.Mkdir(filepath.Join(dev, m.dir), 0o755); err != nil {
			return setupErr("sandbox: /dev/%s: %v", m.dir, err)
		}
		if err := unix.Mount(m.source, filepath.Join(dev, m.dir), m.fstype, m.flags, m.data); err != nil {
			return setupErr("sandbox: mount /dev/%s: %v", m.dir, err)
		}
	}
	for _, l := range devLinks {
		if err := os.Symlink(l.target, filepath.Join(dev, l.name)); err != nil {
			return setupErr("sandbox: /dev/%s: %v", l.name, err)
		}
	}
	return nil
}

// devMounts are the file systems of the program's /dev, dir relative to
// it: a devpts of its own (a new instance: the init's pseudo-terminals
// stay out of reach) and /dev/shm of shmSize bytes (0: tmpfs's default).
func devMounts(shmSize int64) []mountSpec {
	shm := "mode=1777"
	if shmSize > 0 {
		shm += ",size=" + itoa(shmSize)
	}
	return []mountSpec{
		{"devpts", "pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"shm", "shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, shm},
	}
}

// devLinks are the symbolic links of the program's /dev.
var devLinks = []struct{ name, target string }{
	{"ptmx", "pts/ptmx"},
	{"fd", "/proc/self/fd"},
	{"stdin", "/proc/self/fd/0"},
	{"stdout", "/proc/self/fd/1"},
	{"stderr", "/proc/self/fd/2"},
}

// lookupEnv returns the last value of key in env, as a shell would see it.
func lookupEnv(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// homeDir returns uid's home from the container's /etc/passwd, or "/".
func homeDir(uid uint32) string {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return "/"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 6 && fields[2] == fmt.Sprint(uid) && fields[5] != "" {
			return fields[5]
		}
	}
	return "/"
}

// execProgram executes argv like execvp(3) with PATH taken from env:
// a name without a slash is tried in each PATH directory in turn; a
// directory where it exists but cannot be executed is remembered and the
// search goes on. It returns only on failure.
func execProgram(argv, env []string) error {
	name := argv[0]
	if strings.Contains(name, "/") {
		err := unix.Exec(name, argv, env)
		return execError(name, err)
	}
	path := lookupEnv(env, "PATH")
	if path == "" && !hasEnv(env, "PATH") {
		path = defaultPath
	}
	var denied error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		err := unix.Exec(p, argv, env)
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
			continue
		case errors.Is(err, unix.EACCES):
			if denied == nil {
				denied = execError(p, err)
			}
			continue
		}
		return execError(p, err)
	}
	if denied != nil {
		return denied
	}
	return &stage2Error{ExitNotFound, fmt.Sprintf("exec: %q: executable file not found in $PATH", name)}
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// execError maps an execve error to the shell's exit codes.
func execError(p string, err error) error {
	code := ExitCannotExec
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		code = ExitNotFound
	}
	return &stage2Error{code, fmt.Sprintf("exec: %q: %v", p, err)}
}

// setThreadCreds sets this thread's supplementary groups, then its real,
// effective and saved GID and UID (the UID last: it drops the right to
// change the others).
func setThreadCreds(uid, gid uint32, groups []uint32) error {
	var p unsafe.Pointer
	if len(groups) > 0 {
		p = unsafe.Pointer(&groups[0])
	}
	_, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(p), 0)
	runtime.KeepAlive(groups)
	if errno != 0 {
		return setupErr("set groups %v: %v", groups, errno)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); errno != 0 {
		return setupErr("set gid %d: %v", gid, errno)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); errno != 0 {
		return setupErr("set uid %d: %v", uid, errno)
	}
	return nil
}
