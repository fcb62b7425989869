package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// configKeys are the settings that may come from the environment (PE_ and
// the flag name in upper case with '_' for '-', such as PE_CACHE_DIR) or
// from the config file, for any command that has the flag of that name.
// Flags given on the command line win over both, the environment over the
// file. The list is short on purpose: per-run flags (-o, --tar) would
// surprise anyone if an environment variable set them.
var configKeys = []string{"log-level", "cache-dir", "platform", "insecure", "max-image-size", "max-image-unpacked", "max-image-entries", "max-image-depth", "image-compress", "vmm", "accel", "kernel", "github-api"}

// configFile returns the path of pe's config file: $PE_CONFIG, else
// $XDG_CONFIG_HOME/pe/config.toml or ~/.config/pe/config.toml.
func configFile() string {
	if p := os.Getenv("PE_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "pe", "config.toml")
}

// applyConfig sets the flags of cmd the user did not give from the
// environment and the config file.
func applyConfig(cmd *cobra.Command) error {
	v := viper.New()
	v.SetEnvPrefix("PE")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	path := configFile()
	if path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("toml")
		err := v.ReadInConfig()
		var notFound viper.ConfigFileNotFoundError
		switch {
		case errors.As(err, &notFound) || errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("reading %s: %w", path, err)
		default:
			for _, k := range v.AllKeys() {
				if !slices.Contains(configKeys, k) {
					return fmt.Errorf("%s: unknown setting %q (pe reads %s)", path, k, strings.Join(configKeys, ", "))
				}
			}
		}
	}
	for _, k := range configKeys {
		f := cmd.Flags().Lookup(k)
		if f == nil || f.Changed || !v.IsSet(k) {
			continue
		}
		if err := f.Value.Set(v.GetString(k)); err != nil {
			return fmt.Errorf("%s from PE_%s or %s: %w", k, strings.ToUpper(strings.ReplaceAll(k, "-", "_")), path, err)
		}
	}
	return nil
}
