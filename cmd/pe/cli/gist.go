package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/internal/units"
)

// newGistCmd returns "pe gist", the group of gist commands.
func newGistCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gist",
		Short: "Fetch and create gists, pe's shareable examples",
		Long: `A gist holding source files and a pe.toml (the image, command, environment and
standard input to run them with; see docs/pe-toml.md) is pe's shareable
example: pe run --gist ID runs it, and web pages link to it as #gist=ID/REVISION.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf(cmd, "unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(newGistFetchCmd(a), newGistCreateCmd(a))
	return cmd
}

// registerGitHubAPI adds --github-api.
func registerGitHubAPI(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "github-api", "", "the GitHub API's base URL (default "+gist.DefaultBaseURL+"; https://HOST/api/v3 for GitHub Enterprise)")
}

// newGistClient returns a gist client for the API at api ("" for
// GitHub's), with the user's token and the gist cache under cacheDir (the
// image cache's directory, "" for the default). The cache keeps the
// Client's default bound, gist.DefaultCacheMaxBytes: pe serve fetches
// whatever gists visitors name, and one directory shared by pe serve and
// pe run is best kept to one bound.
func newGistClient(api, cacheDir string) *gist.Client {
	return &gist.Client{
		BaseURL:   api,
		Token:     gist.TokenFromEnv(),
		CacheDir:  gistCacheDir(cacheDir),
		UserAgent: "pe/" + Version,
	}
}

// gistCacheDir is where fetched gists are kept: "gists" in pe's cache
// directory, beside the image cache's entries ("" when there is no cache
// directory: no disk cache).
func gistCacheDir(flag string) string {
	if flag == "" {
		d, err := image.DefaultCacheDir()
		if err != nil {
			return ""
		}
		flag = d
	}
	return filepath.Join(flag, "gists")
}

// newGistFetchCmd returns "pe gist fetch".
func newGistFetchCmd(a *app) *cobra.Command {
	var out, api, cacheDir string
	cmd := &cobra.Command{
		Use:   "fetch ID[/REVISION] [-o DIR]",
		Short: "Write a gist's files into a directory",
		Long: `Write the files of a gist into DIR (default: a new directory named after the
gist's ID) and print the revision fetched. ID may be a gist ID, ID/REVISION (a
40-digit commit hash, for a version that never changes), a gist.github.com or
API URL, or a #gist=ID/REVISION link of pe's web page. The gist's pe.toml, if
it has one, is checked: pe exits with status 125 and names the key and line of
a mistake (the files are written all the same, to fix it).

The token in GITHUB_TOKEN, GH_TOKEN or the GitHub CLI's config, when there is
one, raises GitHub's rate limit (60 requests an hour without) and reads secret
gists. Revisions are cached in the cache directory, the latest revision is
checked with GitHub at each fetch (a cheap conditional request); the cache
keeps within 64 MiB, the least recently used gists removed first.`,
		Example: `  pe gist fetch aa5a315d61ae9438b18d
  pe gist fetch https://gist.github.com/octocat/aa5a315d61ae9438b18d -o hello
  pe gist fetch aa5a315d61ae9438b18d/57a7f021a713b1c5a6a199b54cc514735d2d462f`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, rev, err := gist.ParseID(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			g, err := newGistClient(api, cacheDir).Fetch(cmd.Context(), id, rev)
			if err != nil {
				return err
			}
			dir := out
			if dir == "" {
				dir = g.ID
			}
			if err := g.WriteDir(dir); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), g.Revision)
			stderr := cmd.ErrOrStderr()
			if isTerminal(stderr) {
				fmt.Fprintf(stderr, "gist %s at revision %s: %d files in %s\n", g.ID, g.Revision, len(g.Files), dir)
			}
			if _, err := g.Config(); errors.Is(err, gist.ErrNoConfig) {
				fmt.Fprintf(stderr, "pe: the gist has no %s: pe run --gist needs --image\n", gist.ConfigName)
			} else if err != nil {
				return fmt.Errorf("%s: %w", dir, err)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&out, "output", "o", "", "the directory to write (must not exist, or be empty)")
	fs.StringVar(&cacheDir, "cache-dir", "", "pe's cache directory; gists are kept in its gists/ (default $XDG_CACHE_HOME/pe or ~/.cache/pe)")
	registerGitHubAPI(fs, &api)
	return cmd
}

// newGistCreateCmd returns "pe gist create".
func newGistCreateCmd(a *app) *cobra.Command {
	var desc, api string
	var public bool
	cmd := &cobra.Command{
		Use:   "create [--public] [-d DESC] FILES...",
		Short: "Create a gist from files",
		Long: `Create a gist holding FILES (each under its base name; text files, not empty)
and print its URL, its revision and the #gist=ID/REVISION link that opens it
in the web page (append it to the page's address). A pe.toml among FILES is checked first. The gist is
secret (unlisted, readable by anyone with the link) unless --public.

Creating a gist needs a GitHub token with the gist scope: GITHUB_TOKEN, GH_TOKEN,
or the GitHub CLI's (gh auth login).`,
		Example: `  pe gist create -d "hello in C" pe.toml hello.c
  pe gist create --public pe.toml main.sh input.txt`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := gist.CreateRequest{Description: desc, Public: public}
			for _, p := range args {
				fi, err := os.Stat(p)
				if err != nil {
					return err
				}
				if !fi.Mode().IsRegular() {
					return fmt.Errorf("%s is not a regular file (gists hold files, not directories)", p)
				}
				if fi.Size() > gist.DefaultMaxFileSize {
					// Checked before reading: the client would refuse it anyway.
					return fmt.Errorf("%s has %d bytes, more than the %d pe puts in a gist", p, fi.Size(), gist.DefaultMaxFileSize)
				}
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				name := filepath.Base(p)
				if name == gist.ConfigName {
					if _, err := gist.ParseConfig(b); err != nil {
						return fmt.Errorf("%s: %w", p, err)
					}
				}
				req.Files = append(req.Files, gist.File{Name: name, Content: b})
			}
			c := newGistClient(api, "")
			if c.Token == "" && (api == "" || api == gist.DefaultBaseURL) {
				return errors.New("creating a gist on GitHub needs a token with the gist scope: set GITHUB_TOKEN or GH_TOKEN, or log in with gh auth login")
			}
			g, err := c.Create(cmd.Context(), req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "url: %s\nrevision: %s\nlink: #gist=%s/%s\n", g.HTMLURL, g.Revision, g.ID, g.Revision)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&public, "public", false, "make the gist public (listed on the owner's profile); default secret")
	fs.StringVarP(&desc, "description", "d", "", "the gist's description")
	registerGitHubAPI(fs, &api)
	return cmd
}

// example is a gist or directory pe run runs: its files, the directory
// they are in, its pe.toml.
type example struct {
	// dir holds the files; it is the run's input directory.
	dir string
	// what names the example in messages: "gist ID/REV" or the directory.
	what    string
	config  *gist.Config
	cleanup func()
}

// loadExample fetches the gist of --gist into a temporary directory, or
// reads the pe.toml of --files DIR. Without a pe.toml, --image is needed.
func loadExample(cmd *cobra.Command, a *app, f *runFlags) (*example, error) {
	ex := &example{cleanup: func() {}}
	var data []byte
	if f.gist != "" {
		id, rev, err := gist.ParseID(f.gist)
		if err != nil {
			return nil, usageErrorf(cmd, "--gist: %v", err)
		}
		g, err := newGistClient(f.githubAPI, f.cacheDir).Fetch(cmd.Context(), id, rev)
		if err != nil {
			return nil, err
		}
		a.log.Debug("gist fetched", "id", g.ID, "revision", g.Revision, "files", len(g.Files))
		ex.what = "gist " + g.ID + "/" + g.Revision
		tmp, err := os.MkdirTemp("", "pe-gist-")
		if err != nil {
			return nil, err
		}
		ex.cleanup = func() { os.RemoveAll(tmp) }
		ex.dir = filepath.Join(tmp, "input")
		if err := g.WriteDir(ex.dir); err != nil {
			ex.cleanup()
			return nil, err
		}
		if cf := g.File(gist.ConfigName); cf != nil {
			data = cf.Content
		}
	} else {
		fi, err := os.Stat(f.files)
		if err != nil {
			return nil, fmt.Errorf("--files: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("--files %s: not a directory", f.files)
		}
		ex.dir, ex.what = f.files, f.files
		data, err = os.ReadFile(filepath.Join(f.files, gist.ConfigName))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	if data == nil {
		if f.image == "" {
			ex.cleanup()
			return nil, fmt.Errorf("%s has no %s: add one (see docs/pe-toml.md) or give --image", ex.what, gist.ConfigName)
		}
		ex.config = &gist.Config{}
		return ex, nil
	}
	c, err := gist.ParseConfig(data)
	if err != nil {
		ex.cleanup()
		return nil, fmt.Errorf("%s: %w", ex.what, err)
	}
	if f.gist != "" && f.image == "" && image.IsLocal(c.Image) {
		ex.cleanup()
		return nil, fmt.Errorf("%s: %s: image %q is a local file, and a gist may only name registry images (give --image to run it anyway)", ex.what, gist.ConfigName, c.Image)
	}
	ex.config = c
	return ex, nil
}

// What a gist's pe.toml may ask of `pe run` without the user's say: a gist
// is someone else's, and its timeout and memory are spent on this machine.
// Asking for more is an error that names the flag that allows it, not a
// silent cut, so that the run is never a different one from what the gist
// meant. --files is the user's own directory and has no such bound.
const (
	gistMaxTimeout   = 10 * time.Minute
	gistMaxMemoryMiB = 4 << 10
)

// applyDefaults sets the flags pe.toml gives and the command line did not:
// --timeout, --memory, --platform. A gist's timeout and memory must be
// within gistMaxTimeout and gistMaxMemoryMiB unless the flag is given.
func (ex *example) applyDefaults(cmd *cobra.Command, f *runFlags) error {
	c := ex.config
	changed := cmd.Flags().Changed
	if c.Timeout > 0 && !changed("timeout") {
		if f.gist != "" && c.Timeout > gistMaxTimeout {
			return fmt.Errorf("%s: %s asks for timeout %v, more than a gist may without --timeout (%v): give --timeout %v to allow it",
				ex.what, gist.ConfigName, c.Timeout, gistMaxTimeout, c.Timeout)
		}
		f.timeout = c.Timeout
	}
	if c.Memory != "" && !changed("memory") {
		if f.gist != "" {
			mem, err := units.ParseSize(c.Memory)
			if err != nil {
				return fmt.Errorf("%s: %s: memory %q: %w", ex.what, gist.ConfigName, c.Memory, err)
			}
			if mem > gistMaxMemoryMiB<<20 {
				return fmt.Errorf("%s: %s asks for memory %s, more than a gist may without --memory (%dMiB): give --memory %s to allow it",
					ex.what, gist.ConfigName, c.Memory, gistMaxMemoryMiB, c.Memory)
			}
		}
		if err := f.memory.Set(c.Memory); err != nil {
			return &usageError{cmd: cmd.CommandPath(), err: err}
		}
	}
	if c.Platform != "" && !changed("platform") {
		f.platform = c.Platform
	}
	return nil
}

// stdin opens the file pe.toml names as standard input, inside the
// example's directory: through an os.Root, so that neither the name nor a
// symbolic link in the directory leads out of it.
func (ex *example) stdin() (*os.File, error) {
	root, err := os.OpenRoot(ex.dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	in, err := root.Open(ex.config.Stdin)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: stdin: %w", ex.what, gist.ConfigName, err)
	}
	return in, nil
}
