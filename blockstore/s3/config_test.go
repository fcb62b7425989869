package s3

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// awsEnv lists every variable LoadConfig reads; each case starts with all
// of them unset so the machine's own settings cannot leak in.
var awsEnv = []string{
	"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
	"AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
	"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
}

func TestLoadConfig(t *testing.T) {
	const credentials = `# pe's test credentials
[default]
aws_access_key_id = AKDEFAULT
aws_secret_access_key = SKDEFAULT ; inline comment

[ci]
aws_access_key_id=AKCI
aws_secret_access_key=SKCI
aws_session_token=TOKCI
`
	const config = `[default]
region = eu-west-3

[profile ci]
region = auto
endpoint_url = https://acct.r2.cloudflarestorage.com

[profile seaweed]
aws_access_key_id = AKSEAWEED
aws_secret_access_key = SKSEAWEED
services = local

[services local]
s3 =
  endpoint_url = http://127.0.0.1:8333
  addressing_style = path

[profile sso]
sso_session = corp
region = us-east-2

[profile virtual]
aws_access_key_id = AKV
aws_secret_access_key = SKV
s3 =
  endpoint_url = https://s3.example.com
  addressing_style = virtual
`
	for _, tc := range []struct {
		name    string
		env     map[string]string // "~" in a value is the temp HOME
		files   bool              // write ~/.aws/credentials and config
		want    Config
		wantErr string
	}{
		{
			name: "nothing set: anonymous AWS",
			want: Config{Region: "us-east-1"},
		},
		{
			name: "environment only, self-hosted",
			env: map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:7070", "AWS_ACCESS_KEY_ID": "AK",
				"AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T", "AWS_DEFAULT_REGION": "us-west-2"},
			want: Config{Endpoint: "http://127.0.0.1:7070", Region: "us-west-2", AccessKeyID: "AK",
				SecretAccessKey: "SK", SessionToken: "T", PathStyle: true, CredentialSource: "environment"},
		},
		{
			name: "AWS_ENDPOINT_URL_S3 wins, AWS_REGION wins",
			env: map[string]string{"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2",
				"AWS_REGION": "r1", "AWS_DEFAULT_REGION": "r2"},
			want: Config{Endpoint: "http://b:2", Region: "r1", PathStyle: true},
		},
		{
			name:  "default profile from the files",
			files: true,
			want: Config{Region: "eu-west-3", AccessKeyID: "AKDEFAULT", SecretAccessKey: "SKDEFAULT",
				CredentialSource: "~/.aws/credentials [default]"},
		},
		{
			name:  "environment keys beat the files",
			files: true,
			env:   map[string]string{"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "SKENV"},
			want: Config{Region: "eu-west-3", AccessKeyID: "AKENV", SecretAccessKey: "SKENV",
				CredentialSource: "environment"},
		},
		{
			name:  "AWS_PROFILE: keys from credentials, endpoint and region from config",
			files: true,
			env:   map[string]string{"AWS_PROFILE": "ci"},
			want: Config{Endpoint: "https://acct.r2.cloudflarestorage.com", Region: "auto", AccessKeyID: "AKCI",
				SecretAccessKey: "SKCI", SessionToken: "TOKCI", PathStyle: true,
				CredentialSource: "~/.aws/credentials [ci]"},
		},
		{
			name:  "keys in config, endpoint from a services section",
			files: true,
			env:   map[string]string{"AWS_PROFILE": "seaweed"},
			want: Config{Endpoint: "http://127.0.0.1:8333", Region: "us-east-1", AccessKeyID: "AKSEAWEED",
				SecretAccessKey: "SKSEAWEED", PathStyle: true, CredentialSource: "~/.aws/config [profile seaweed]"},
		},
		{
			name:  "nested s3 block asks for virtual hosts",
			files: true,
			env:   map[string]string{"AWS_PROFILE": "virtual"},
			want: Config{Endpoint: "https://s3.example.com", Region: "us-east-1", AccessKeyID: "AKV",
				SecretAccessKey: "SKV", CredentialSource: "~/.aws/config [profile virtual]"},
		},
		{
			name:  "ignore configured endpoints",
			files: true,
			env:   map[string]string{"AWS_PROFILE": "ci", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
			want: Config{Region: "auto", AccessKeyID: "AKCI", SecretAccessKey: "SKCI", SessionToken: "TOKCI",
				CredentialSource: "~/.aws/credentials [ci]"},
		},
		{
			name:  "files named by the environment",
			files: true,
			env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": "~/elsewhere/creds", "AWS_CONFIG_FILE": "~/elsewhere/conf",
				"AWS_PROFILE": "other"},
			want: Config{Region: "sa-east-1", AccessKeyID: "AKOTHER", SecretAccessKey: "SKOTHER",
				CredentialSource: "~/elsewhere/creds [other]"},
		},
		{
			name:    "unknown profile",
			files:   true,
			env:     map[string]string{"AWS_PROFILE": "nope"},
			wantErr: `AWS profile "nope" is in neither`,
		},
		{
			name:    "profile with keys from SSO",
			files:   true,
			env:     map[string]string{"AWS_PROFILE": "sso"},
			wantErr: `AWS profile "sso" gets its keys through sso_session, which pe does not support`,
		},
		{
			name:    "key id without secret",
			env:     map[string]string{"AWS_ACCESS_KEY_ID": "AK"},
			wantErr: "AWS_SECRET_ACCESS_KEY is not",
		},
		{
			name:    "endpoint without a scheme",
			env:     map[string]string{"AWS_ENDPOINT_URL": "127.0.0.1:7070"},
			wantErr: "not an http:// or https:// URL",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			for _, k := range awsEnv {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			t.Setenv("HOME", home)
			if tc.files {
				write(t, filepath.Join(home, ".aws", "credentials"), credentials)
				write(t, filepath.Join(home, ".aws", "config"), config)
				write(t, filepath.Join(home, "elsewhere", "creds"), "[other]\naws_access_key_id=AKOTHER\naws_secret_access_key=SKOTHER\n")
				write(t, filepath.Join(home, "elsewhere", "conf"), "[profile other]\nregion=sa-east-1\n")
			}
			for k, v := range tc.env {
				t.Setenv(k, strings.ReplaceAll(v, "~", home))
			}
			got, err := LoadConfig()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("LoadConfig: err %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			got.CredentialSource = strings.ReplaceAll(got.CredentialSource, home, "~")
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("LoadConfig (-want +got):\n%s", diff)
			}
		})
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestParseINI(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    iniFile
		wantErr string
	}{
		{
			name: "sections, comments, nesting, CRLF",
			in:   "; top\r\n[default]\r\nRegion = x # c\r\ns3 =\r\n  endpoint_url = http://h\r\n\tmax_concurrent_requests=4\r\nafter = y\r\n[  profile   a  ]\r\nk=v=w\r\n",
			want: iniFile{
				"default":   {"region": "x", "s3": "", "s3.endpoint_url": "http://h", "s3.max_concurrent_requests": "4", "after": "y"},
				"profile a": {"k": "v=w"},
			},
		},
		{name: "value before a section", in: "k = v\n", wantErr: `:1: "k = v" before any [section]`},
		{name: "no equals", in: "[a]\njunk\n", wantErr: `:2: "junk" is not key = value`},
		{name: "unclosed section", in: "[a\n", wantErr: "no closing ]"},
		{name: "empty section", in: "[ ]\n", wantErr: "empty section name"},
		{name: "empty key", in: "[a]\n = v\n", wantErr: "empty key"},
		{name: "text after header", in: "[a] b\n", wantErr: "text after section header"},
		{name: "too big", in: strings.Repeat("#", maxINIBytes+1), wantErr: "more than the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseINI("f", []byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseINI (-want +got):\n%s", diff)
			}
		})
	}
}
