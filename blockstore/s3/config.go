package s3

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// DefaultRegion is the region used when neither the environment nor the
// profile names one; self-hosted servers accept any region in signatures.
const DefaultRegion = "us-east-1"

// Config says where the object store is and who we are to it.
type Config struct {
	// Endpoint is the base URL of a self-hosted or non-AWS server
	// (http://127.0.0.1:7070, https://ACCOUNT.r2.cloudflarestorage.com);
	// empty means AWS S3 in Region.
	Endpoint string
	// Region signs requests and, for AWS, picks the endpoint.
	Region string
	// AccessKeyID, SecretAccessKey and SessionToken are the credentials;
	// with no AccessKeyID requests go out unsigned (public buckets).
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// PathStyle addresses buckets as ENDPOINT/BUCKET/KEY rather than
	// BUCKET.ENDPOINT/KEY; self-hosted servers need it, AWS prefers virtual
	// hosts.
	PathStyle bool
	// CredentialSource says where the keys came from, for error messages:
	// "environment", "/root/.aws/credentials [default]", or "" if none.
	CredentialSource string
}

// LoadConfig reads the configuration the way the AWS CLI and SDKs do:
// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
// AWS_DEFAULT_REGION, then the profile named by AWS_PROFILE (default
// "default") in ~/.aws/credentials and ~/.aws/config (or the files named by
// AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE). The environment wins over
// the files, and the credentials file over the config file. With an endpoint
// set, buckets are addressed path-style unless the profile's s3 block says
// addressing_style = virtual.
func LoadConfig() (Config, error) {
	profile := os.Getenv("AWS_PROFILE")
	explicit := profile != ""
	if profile == "" {
		profile = os.Getenv("AWS_DEFAULT_PROFILE")
		explicit = profile != ""
	}
	if profile == "" {
		profile = "default"
	}
	credPath, err := sharedFile("AWS_SHARED_CREDENTIALS_FILE", "credentials")
	if err != nil {
		return Config{}, err
	}
	confPath, err := sharedFile("AWS_CONFIG_FILE", "config")
	if err != nil {
		return Config{}, err
	}
	creds, err := readINI(credPath)
	if err != nil {
		return Config{}, err
	}
	conf, err := readINI(confPath)
	if err != nil {
		return Config{}, err
	}
	credSec := creds[profile]
	confName := "profile " + profile
	confSec := conf[confName]
	if confSec == nil && profile == "default" {
		confName, confSec = "default", conf["default"]
	}
	if explicit && credSec == nil && confSec == nil {
		return Config{}, fmt.Errorf("s3: AWS profile %q is in neither %s nor %s", profile, credPath, confPath)
	}
	// A profile's `services = NAME` points at a [services NAME] section
	// holding per-service settings such as s3's endpoint_url.
	var svcSec map[string]string
	if name := confSec["services"]; name != "" {
		svcSec = conf["services "+name]
	}
	lookup := func(key string) string {
		for _, sec := range []map[string]string{svcSec, confSec} {
			if v := sec[key]; v != "" {
				return v
			}
		}
		return ""
	}

	var c Config
	switch {
	case os.Getenv("AWS_ACCESS_KEY_ID") != "":
		c.AccessKeyID = os.Getenv("AWS_ACCESS_KEY_ID")
		c.SecretAccessKey = os.Getenv("AWS_SECRET_ACCESS_KEY")
		c.SessionToken = os.Getenv("AWS_SESSION_TOKEN")
		c.CredentialSource = "environment"
		if c.SecretAccessKey == "" {
			return Config{}, errors.New("s3: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
		}
	case credSec["aws_access_key_id"] != "":
		c.AccessKeyID, c.SecretAccessKey = credSec["aws_access_key_id"], credSec["aws_secret_access_key"]
		c.SessionToken = credSec["aws_session_token"]
		c.CredentialSource = fmt.Sprintf("%s [%s]", credPath, profile)
	case confSec["aws_access_key_id"] != "":
		c.AccessKeyID, c.SecretAccessKey = confSec["aws_access_key_id"], confSec["aws_secret_access_key"]
		c.SessionToken = confSec["aws_session_token"]
		c.CredentialSource = fmt.Sprintf("%s [%s]", confPath, confName)
	}
	if c.AccessKeyID == "" {
		// Profiles that get keys from elsewhere (roles, SSO, a helper
		// program) would otherwise fall through to unsigned requests and a
		// puzzling 403; say what is missing instead.
		for _, k := range []string{"credential_process", "role_arn", "sso_session", "sso_start_url", "web_identity_token_file"} {
			if confSec[k] != "" || credSec[k] != "" {
				return Config{}, fmt.Errorf("s3: AWS profile %q gets its keys through %s, which pe does not support: "+
					"export them instead, e.g. eval \"$(aws configure export-credentials --profile %s --format env)\"", profile, k, profile)
			}
		}
	}
	if c.AccessKeyID != "" && c.SecretAccessKey == "" {
		return Config{}, fmt.Errorf("s3: %s has aws_access_key_id but no aws_secret_access_key", c.CredentialSource)
	}

	c.Region = firstNonEmpty(os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION"), confSec["region"], DefaultRegion)

	if !strings.EqualFold(os.Getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"), "true") &&
		!strings.EqualFold(confSec["ignore_configured_endpoint_urls"], "true") {
		c.Endpoint = firstNonEmpty(os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL"),
			lookup("s3.endpoint_url"), lookup("endpoint_url"))
	}
	if c.Endpoint != "" {
		if err := checkEndpoint(c.Endpoint); err != nil {
			return Config{}, err
		}
		c.PathStyle = !strings.EqualFold(lookup("s3.addressing_style"), "virtual")
	} else {
		c.PathStyle = strings.EqualFold(lookup("s3.addressing_style"), "path")
	}
	return c, nil
}

// checkEndpoint rejects endpoints that are not absolute http(s) URLs, so a
// typo fails here rather than as a confusing DNS error later.
func checkEndpoint(e string) error {
	u, err := url.Parse(e)
	if err != nil {
		return fmt.Errorf("s3: endpoint %q is not an http:// or https:// URL: %w", e, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("s3: endpoint %q is not an http:// or https:// URL", e)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("s3: endpoint %q has a query or fragment", e)
	}
	return nil
}

// sharedFile returns the path of a shared AWS file: the environment
// variable's value, or ~/.aws/NAME.
func sharedFile(env, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("s3: finding ~/.aws/%s: %w", name, err)
	}
	return filepath.Join(home, ".aws", name), nil
}

// readINI parses path; a missing file is an empty one.
func readINI(path string) (iniFile, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return iniFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	defer f.Close()
	// Read one byte past the limit so parseINI can say the file is too big.
	data := make([]byte, maxINIBytes+1)
	n, err := readFull(f, data)
	if err != nil {
		return nil, fmt.Errorf("s3: reading %s: %w", path, err)
	}
	ini, err := parseINI(path, data[:n])
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	return ini, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
