package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
)

// ExitStatus is the error of a command that ran to its end but exits with
// a status other than 0 and prints nothing more: pe run whose program
// failed, pe doctor with something missing. main exits with Code.
type ExitStatus struct {
	Code int
}

func (e *ExitStatus) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// vmFlags are the flags of the commands that boot VMs (pe run, pe doctor).
type vmFlags struct {
	vmm, accel, kernel, init string
	lazyDisk                 string
}

func (f *vmFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.vmm, "vmm", "auto", "the VMM: auto (cloud-hypervisor where it and KVM work, else qemu), qemu or cloud-hypervisor")
	fs.StringVar(&f.accel, "accel", "auto", "the acceleration: auto (KVM when a probe boot shows it works, else TCG), kvm or tcg")
	fs.StringVar(&f.kernel, "kernel", "", "the guest kernel directory (default $PE_KERNEL, else "+"$PE_DATA_DIR/kernel or ~/.local/share/pe/kernel, installed by make kernel)")
	fs.StringVar(&f.init, "init", "", "the guest init binary (default $PE_INIT, else pe-init next to pe)")
	fs.StringVar(&f.lazyDisk, "lazy-disk", "nbd", "how QEMU reads an s3:// image on demand: nbd (pe's NBD server) or fuse (a file on a FUSE mount, as cloud-hypervisor always does)")
}

// newEngine returns an engine with these flags.
func (f *vmFlags) newEngine(a *app, images engine.ImageSource, cacheDir string, lim guest.Limits) (*engine.Engine, error) {
	return engine.New(f.engineOptions(a, images, cacheDir, lim))
}

// engineOptions are the engine's options for these flags.
func (f *vmFlags) engineOptions(a *app, images engine.ImageSource, cacheDir string, lim guest.Limits) engine.Options {
	return engine.Options{
		Images:     images,
		VMM:        f.vmm,
		Accel:      f.accel,
		Kernel:     f.kernel,
		InitBinary: f.init,
		CacheDir:   engineCacheDir(cacheDir),
		Limits:     lim,
		Log:        a.log,
		LazyFUSE:   f.lazyDisk == "fuse",
	}
}

// chunkCacheVar defines --chunk-cache-size, the bound of the chunk cache
// of s3:// images read lazily.
func chunkCacheVar(fs *pflag.FlagSet, p *sizeFlag) {
	sizeVar(fs, p, "chunk-cache-size", "20GiB", sizeSpec{min: 64 << 20, want: "a size such as 20GiB", small: "at least 64MiB"},
		"bound the cache of chunks of s3:// images read on demand (in the cache directory, shared by every pe using it); the least recently used go first")
}

// runFlags are pe run's flags.
type runFlags struct {
	pullFlags
	vmFlags
	env, envFiles []string
	workdir, user string
	entrypoint    string
	interactive   bool
	tty           bool
	stdinFile     string
	inputDir      string
	outputDir     string
	timeout       time.Duration
	memory        memoryFlag
	maxOutput     sizeFlag
	cpus          cpusFlag
	asJSON, debug bool
	// gist and files run an example (a gist, a directory) with its
	// pe.toml; image overrides pe.toml's image.
	gist, files, image string
	githubAPI          string
	// snapshot restores a VM instead of booting one.
	snapshot string
	// cold boots the VM instead of restoring pe's boot snapshot.
	cold bool
	// chunkCache bounds the chunk cache of lazy s3:// images;
	// flushChunks waits for its writes (set with the engine's options).
	chunkCache  sizeFlag
	flushChunks func()
}

// newRunCmd returns "pe run".
func newRunCmd(a *app) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]\n  pe run [flags] --gist ID[/REVISION] | --files DIR [COMMAND [ARG...]]",
		Short: "Run a program from an image in a micro-VM",
		Long: `Run COMMAND (or the image's entrypoint and cmd) from IMAGE in a throw-away
micro-VM, as docker run would in a container: the image's config gives the
entrypoint, cmd, environment, working directory and user, and the flags change
them. Flags after IMAGE belong to the program.

IMAGE is a reference (busybox, docker.io/library/gcc:14, oci:./layout[:tag],
docker-archive:./img.tar), pulled into the image cache when needed, or an
EROFS file (path ending in .erofs). An s3:// image (pe image push) is not
downloaded: the VM reads it through pe, which fetches the chunks it touches
into a chunk cache (--chunk-cache-size), unless pe image pull put it in the
cache whole. Such runs need --vmm qemu for now.

pe run --snapshot DIR [flags] [COMMAND [ARG...]] takes no IMAGE: the VM is
restored from the snapshot in DIR (made by pe snapshot create), already booted
with its image, which takes a fraction of a boot's time. Everything else is the
same; --memory and --cpus, if given, must be the snapshot's.

The program's standard output and error go to pe's as it writes them. With
-i, pe's standard input is streamed to the program while it runs; --stdin FILE
gives it a file, whole. SIGINT and SIGTERM to pe are forwarded to the program
(which, as PID 1 of its container, ignores those it has no handler for); a
second one stops the VM. pe exits with the
program's status, 128+N when signal N killed it, 124 when --timeout killed it,
and 125 when pe itself failed (one line on standard error says why).
--json prints one JSON object instead: exit_code, signal, timed_out, stdout,
stderr (stdout_b64, stderr_b64 when not UTF-8), the truncation flags, image
{reference, digest}, vmm, accel, duration_ms (each phase) and rusage, and
for an s3:// image read on demand image_blocks (gets, bytes_fetched, hits,
misses, stalled_ns...).

--gist ID[/REVISION] runs a gist, --files DIR a directory, as their pe.toml
says (docs/pe-toml.md): its image (--image overrides it), cmd (the arguments
override it), entrypoint, env (-e and --env-file add to it), stdin (-i and
--stdin override it), timeout, memory and platform (the flags override them;
a gist may ask for at most 10m and 4GiB without them).
The files (pe.toml too) are copied to /run/pe/input, the working directory
unless -w says otherwise. Gists are fetched from GitHub (--github-api for
another server) and cached; GITHUB_TOKEN, GH_TOKEN or the GitHub CLI's token
raises GitHub's rate limit.`,
		Example: `  pe run busybox echo hello
  pe run -e NAME=world busybox sh -c 'echo hello $NAME'
  echo data | pe run -i busybox wc -c
  pe run --input ./src --output ./out gcc:14 sh -c 'gcc -o /run/pe/output/a /run/pe/input/a.c'
  pe run --json --timeout 2s busybox sleep 5
  pe run --gist aa5a315d61ae9438b18d
  pe run --gist https://gist.github.com/octocat/aa5a315d61ae9438b18d --image alpine sh -x main.sh
  pe run --files ./example
  pe snapshot create busybox -o ./bb.snap && pe run --snapshot ./bb.snap echo hello`,
		Args: usageArgs(func(cmd *cobra.Command, args []string) error {
			if f.gist != "" || f.files != "" || f.snapshot != "" {
				return nil // the arguments are the command
			}
			return cobra.MinimumNArgs(1)(cmd, args)
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(cmd, a, f, args)
		},
	}
	cmd.Flags().SetInterspersed(false)
	fs := cmd.Flags()
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable, NAME=VALUE, or NAME to pass pe's value (repeatable)")
	fs.StringArrayVar(&f.envFiles, "env-file", nil, "read environment variables from a file of NAME=VALUE lines (repeatable)")
	fs.StringVarP(&f.workdir, "workdir", "w", "", "the working directory inside the image (absolute)")
	fs.StringVarP(&f.user, "user", "u", "", "the user: name, UID, name:group or UID:GID (names from the image's /etc/passwd, /etc/group)")
	fs.StringVar(&f.entrypoint, "entrypoint", "", "replace the image's entrypoint (and drop its cmd); '' clears it")
	fs.BoolVarP(&f.interactive, "interactive", "i", false, "stream pe's standard input to the program while it runs")
	fs.BoolVarP(&f.tty, "tty", "t", false, "run the program on a terminal (needs a terminal on pe's standard input)")
	fs.StringVar(&f.stdinFile, "stdin", "", "give this file to the program as standard input")
	fs.StringVar(&f.inputDir, "input", "", "copy this directory to /run/pe/input in the VM (modes and symlinks kept)")
	fs.StringVar(&f.outputDir, "output", "", "copy /run/pe/output from the VM into this directory afterwards (a new or empty one: pe never changes what is there)")
	fs.DurationVar(&f.timeout, "timeout", engine.DefaultTimeout, "the program's time limit (1h with -it)")
	memoryVar(fs, &f.memory, "the VM's memory")
	cpusVar(fs, &f.cpus, "the VM's vCPUs")
	sizeVar(fs, &f.maxOutput, "max-output", "1MiB", maxOutputSpec, "keep at most this much of stdout and of stderr each (and of the output directory)")
	fs.BoolVar(&f.asJSON, "json", false, "print one JSON object instead of the program's output")
	fs.BoolVar(&f.debug, "debug", false, "show the guest console and the guest init's log on standard error")
	fs.StringVar(&f.gist, "gist", "", "run the gist ID[/REVISION] (or its URL) as its pe.toml says; the arguments are the command")
	fs.StringVar(&f.files, "files", "", "run the directory DIR as its pe.toml says; the arguments are the command")
	fs.StringVar(&f.image, "image", "", "with --gist or --files: the image, instead of pe.toml's")
	registerGitHubAPI(fs, &f.githubAPI)
	fs.StringVar(&f.snapshot, "snapshot", "", "restore the VM from this snapshot directory (pe snapshot create) instead of booting one; then no IMAGE is given")
	fs.BoolVar(&f.cold, "cold", false, "boot the VM instead of restoring pe's boot snapshot (which the first run makes, in the cache; --debug boots too)")
	chunkCacheVar(fs, &f.chunkCache)
	f.pullFlags.register(fs, true)
	f.vmFlags.register(cmd)
	return cmd
}

// runRun is pe run.
func runRun(cmd *cobra.Command, a *app, f *runFlags, args []string) error {
	ex, args, err := runExample(cmd, a, f, args)
	if err != nil {
		return err
	}
	if ex != nil {
		defer ex.cleanup()
	}
	req := &engine.RunRequest{
		InputDir:  f.inputDir,
		OutputDir: f.outputDir,
		Timeout:   f.timeout,
		CPUs:      int(f.cpus),
		Debug:     f.debug,
	}
	if f.snapshot != "" {
		// The snapshot's machine, unless the flags ask for another one
		// (which the engine refuses).
		req.SnapshotDir = f.snapshot
		if !cmd.Flags().Changed("cpus") {
			req.CPUs = 0
		}
		if len(args) > 0 {
			req.Cmd = args
		}
	} else {
		req.Image = args[0]
		if len(args) > 1 {
			req.Cmd = args[1:]
		} else if ex != nil {
			req.Cmd = ex.config.Cmd
		}
	}
	req.Entrypoint = runEntrypoint(cmd, f, ex)
	req.Workdir, req.User = f.workdir, f.user
	if ex != nil && req.Workdir == "" {
		req.Workdir = guest.InputDir
	}
	if req.Env, err = exampleEnv(a, f, ex); err != nil {
		return usageErrorf(cmd, "%v", err)
	}
	if f.timeout <= 0 {
		return usageErrorf(cmd, "--timeout %v: want a positive duration", f.timeout)
	}
	if f.tty && f.asJSON {
		// A terminal's output (its echo, its control sequences) is for a
		// person, and a raw terminal would mangle the JSON's lines.
		return usageErrorf(cmd, "-t and --json do not go together: a terminal's output is for a person, --json's for a program")
	}
	if f.tty && f.interactive && f.timeout == engine.DefaultTimeout && !cmd.Flags().Changed("timeout") {
		// Someone types at an interactive session: a batch run's 10 s
		// would end it mid-sentence.
		f.timeout, req.Timeout = interactiveTimeout, interactiveTimeout
	}
	req.MemoryMiB = f.memory.MiB()
	if f.snapshot != "" && !cmd.Flags().Changed("memory") {
		req.MemoryMiB = 0
	}
	req.MaxOutput = f.maxOutput.Bytes()
	var closeStdin func()
	if req.Stdin, closeStdin, err = runStdin(cmd, f, ex); err != nil {
		return err
	}
	defer closeStdin()
	var liveStdin io.Reader
	if f.interactive {
		// Streamed while the program runs, not read whole first.
		liveStdin, req.Stdin = req.Stdin, nil
	}
	var release func()
	ctx, stop := context.WithCancel(cmd.Context())
	defer stop()
	cio := &commandIO{in: cmd.InOrStdin(), out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}
	if req.Live, release, err = runLive(cio, f.asJSON, liveStdin, f.tty, stop); err != nil {
		return usageErrorf(cmd, "-t: %v", err)
	}
	// Deferred, the terminal -it made raw is restored on every way out
	// (a panic included); called again below, before pe prints its notes.
	defer release()
	if err := checkInputDir(f.inputDir); err != nil {
		return err
	}
	if f.debug {
		req.Console = cmd.ErrOrStderr()
	}
	opts, err := runEngineOptions(cmd, a, f)
	if err != nil {
		return err
	}
	if f.snapshot != "" {
		if opts, err = engine.ForSnapshot(opts, f.snapshot); err != nil {
			return err
		}
	}
	if req.Live.TTY != nil && liveStdin != nil && opts.Notice != nil {
		// pe's terminal is raw during the run: a line of pe's returns
		// the cursor itself.
		notice := opts.Notice
		opts.Notice = func(msg string) { notice(msg + "\r") }
	}
	res, err := a.runEngine(ctx, opts, req)
	release()
	// The chunks a lazy run fetched are written to the chunk cache in
	// the background: wait for them before pe exits, once the result is
	// out.
	defer f.flushChunks()
	if err != nil {
		return err
	}
	return printRunResult(cmd, f, res, req.Live.Stdout != nil)
}

// interactiveTimeout is pe run -it's time limit when --timeout is not
// given.
const interactiveTimeout = time.Hour

// runExample checks the flags that go with --gist and --files, loads the
// files they give, sets the flags pe.toml gives and the command line did
// not, and puts the image in front of args (the arguments are the
// command). ex is nil without --gist and --files; the caller cleans it up.
func runExample(cmd *cobra.Command, a *app, f *runFlags, args []string) (ex *example, _ []string, err error) {
	switch {
	case f.gist != "" && f.files != "":
		return nil, nil, usageErrorf(cmd, "--gist and --files both give the files to run: choose one")
	case (f.gist != "" || f.files != "") && f.inputDir != "":
		return nil, nil, usageErrorf(cmd, "--gist and --files put their files at /run/pe/input: drop --input")
	case f.snapshot != "" && (f.gist != "" || f.files != ""):
		return nil, nil, usageErrorf(cmd, "--snapshot runs the snapshot's image: it does not go with --gist or --files")
	case f.image != "" && f.gist == "" && f.files == "":
		return nil, nil, usageErrorf(cmd, "--image goes with --gist or --files; otherwise IMAGE is the first argument")
	case f.gist != "" || f.files != "":
		if ex, err = loadExample(cmd, a, f); err != nil {
			return nil, nil, err
		}
		if err := ex.applyDefaults(cmd, f); err != nil {
			ex.cleanup()
			return nil, nil, err
		}
		// The arguments are the command: put the image in front, as
		// without --gist.
		img := ex.config.Image
		if f.image != "" {
			img = f.image
		}
		f.inputDir = ex.dir
		return ex, append([]string{img}, args...), nil
	}
	return nil, args, nil
}

// runEntrypoint is the entrypoint the run asks for: --entrypoint's, else
// pe.toml's, else nil (the image's).
func runEntrypoint(cmd *cobra.Command, f *runFlags, ex *example) []string {
	if cmd.Flags().Changed("entrypoint") {
		if f.entrypoint != "" {
			return []string{f.entrypoint}
		}
		return []string{}
	}
	if ex != nil && ex.config.Entrypoint != nil {
		return ex.config.Entrypoint
	}
	return nil
}

// runStdin opens the program's standard input: pe's (-i), a file
// (--stdin) or the file pe.toml names; nil for none. The caller calls
// the returned function when the run is over.
func runStdin(cmd *cobra.Command, f *runFlags, ex *example) (io.Reader, func(), error) {
	var in *os.File
	var err error
	switch {
	case f.interactive && f.stdinFile != "":
		return nil, nil, usageErrorf(cmd, "-i and --stdin both give the program's standard input: choose one")
	case f.interactive:
		return cmd.InOrStdin(), func() {}, nil
	case f.stdinFile != "":
		if in, err = os.Open(f.stdinFile); err != nil {
			return nil, nil, fmt.Errorf("--stdin: %w", err)
		}
	case ex != nil && ex.config.Stdin != "":
		if in, err = ex.stdin(); err != nil {
			return nil, nil, err
		}
	default:
		return nil, func() {}, nil
	}
	return in, func() { in.Close() }, nil
}

// exampleEnv is the program's environment: pe.toml's first, then the
// flags' entries, which replace its.
func exampleEnv(a *app, f *runFlags, ex *example) ([]string, error) {
	env, err := runEnv(f.envFiles, f.env, a.lookupEnv)
	if err != nil || ex == nil || len(ex.config.Env) == 0 {
		return env, err
	}
	return append(append([]string{}, ex.config.Env...), env...), nil
}

// checkInputDir checks that --input (or the example's directory) is a
// directory, before the VM starts.
func checkInputDir(dir string) error {
	if dir == "" {
		return nil
	}
	if fi, err := os.Stat(dir); err != nil {
		return fmt.Errorf("--input: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("--input %s: not a directory", dir)
	}
	return nil
}

// runEngineOptions are the engine's options for pe run: images from the
// cache (or EROFS files), the flags' VMM and limits.
func runEngineOptions(cmd *cobra.Command, a *app, f *runFlags) (engine.Options, error) {
	popts, err := f.pullFlags.options(cmd, a)
	if err != nil {
		return engine.Options{}, err
	}
	cache, err := f.open()
	if err != nil {
		return engine.Options{}, err
	}
	lim := guest.DefaultLimits()
	lim.MaxOutput = max(lim.MaxOutput, f.maxOutput.Bytes())
	f.flushChunks = cache.FlushChunkStore
	opts := f.vmFlags.engineOptions(a, &engine.FileSource{Next: &engine.CacheSource{Cache: cache, Options: popts, ChunkCacheSize: f.chunkCache.Bytes()}}, f.cacheDir, lim)
	opts.BootSnapshots = !f.cold
	opts.YieldCores = true // one VM: pe's own work stays off its vCPUs' cores
	if stderr := cmd.ErrOrStderr(); isTerminal(stderr) && !f.asJSON {
		opts.Notice = func(msg string) { fmt.Fprintf(stderr, "pe: %s\n", msg) }
	}
	return opts, nil
}

// printRunResult prints the program's output (or, with --json, the
// result) and pe's notes, and returns the program's exit status.
// streamed says the engine wrote the output already (engine.Live).
func printRunResult(cmd *cobra.Command, f *runFlags, res *engine.RunResult, streamed bool) error {
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.asJSON {
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(out, "%s\n", b); err != nil {
			return err
		}
	} else {
		if !streamed {
			if _, err := out.Write(res.Stdout); err != nil {
				return err
			}
			errOut.Write(res.Stderr)
		}
		for _, note := range runNotes(res, f) {
			fmt.Fprintf(errOut, "pe: %s\n", note)
		}
	}
	if code := res.ExitStatus(); code != 0 {
		return &ExitStatus{Code: code}
	}
	return nil
}

// runNotes are the lines pe adds on standard error after the program's
// output: what cut it short.
func runNotes(res *engine.RunResult, f *runFlags) []string {
	var notes []string
	if res.TimedOut {
		notes = append(notes, fmt.Sprintf("the program ran past --timeout %v and was killed", f.timeout))
	}
	if res.Rusage.OOMKills > 0 {
		notes = append(notes, fmt.Sprintf("the program ran out of memory (--memory %s): %d process(es) killed", f.memory, res.Rusage.OOMKills))
	}
	for _, s := range []struct {
		name  string
		cut   bool
		total int64
	}{{"stdout", res.StdoutTruncated, res.StdoutBytes}, {"stderr", res.StderrTruncated, res.StderrBytes}} {
		if s.cut {
			notes = append(notes, fmt.Sprintf("%s cut at --max-output %s (the program wrote %d bytes)", s.name, f.maxOutput, s.total))
		}
	}
	if res.OutputTruncated {
		notes = append(notes, fmt.Sprintf("the output directory did not fit in --max-output %s; some files are missing", f.maxOutput))
	}
	return notes
}

// runEnv gathers the environment the flags give: --env-file files, then
// -e entries; a bare NAME takes pe's own value and is left out when pe has
// none, as docker does.
func runEnv(files, entries []string, lookup func(string) (string, bool)) ([]string, error) {
	var env []string
	add := func(entry, from string) error {
		name, _, hasValue := strings.Cut(entry, "=")
		if name == "" || strings.ContainsAny(name, " \t") {
			return fmt.Errorf("%s: %q is not NAME=VALUE or NAME", from, entry)
		}
		if !hasValue {
			v, ok := lookup(name)
			if !ok {
				return nil
			}
			entry = name + "=" + v
		}
		env = append(env, entry)
		return nil
	}
	for _, file := range files {
		fh, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("--env-file: %w", err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimLeft(sc.Text(), " \t")
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if err := add(line, fmt.Sprintf("--env-file %s line %d", file, n)); err != nil {
				fh.Close()
				return nil, err
			}
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("--env-file %s: %w", file, err)
		}
	}
	for _, e := range entries {
		if err := add(e, "-e"); err != nil {
			return nil, err
		}
	}
	return env, nil
}

// engineCacheDir is where the engine keeps initramfs files and the KVM
// probe's verdict: the image cache's directory when --cache-dir names one.
func engineCacheDir(flag string) string {
	if flag != "" {
		return flag
	}
	if d, err := image.DefaultCacheDir(); err == nil {
		return d
	}
	return vmm.CacheDir()
}
