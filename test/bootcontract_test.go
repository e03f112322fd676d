package test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBootContractSingleCopy: the facts the builders and the node agent share (kernel
// command-line keys, device forms, partition labels, the initrd's module list, the GPT
// signature and partition types) are spelled in images/boot and images/boot/gpt only. A string
// literal elsewhere in the non-test code of builders/ and cmd/ that starts with one of them is a
// second copy that can drift.
func TestBootContractSingleCopy(t *testing.T) {
	facts := []string{
		"imgctl.root", "imgctl.state", "imgctl.init", "imgctl.debug", "imgctl.metadata", "imgctl.credential", "imgctl.verity",
		"loader/entries", "imgctl-a+", "imgctl-b+",
		"PARTUUID=", "PARTLABEL=",
		"etc/imgctl/modules", "/etc/imgctl/modules",
		"EFI PART",
		"c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "0fc63daf-8483-4772-8e79-3d69d8477de4",
	}
	labels := []string{"ESP", "ROOT-A", "ROOT-B", "STATE"}
	files := 0
	for _, root := range []string{"../builders", "../cmd"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			files++
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					return true
				}
				for _, fact := range facts {
					if strings.HasPrefix(strings.ToLower(s), strings.ToLower(fact)) {
						t.Errorf("%s: string %q repeats %q: use the constant from images/boot or images/boot/gpt", fset.Position(lit.Pos()), s, fact)
					}
				}
				for _, l := range labels {
					if s == l {
						t.Errorf("%s: string %q is a partition label: use the constant from images/boot", fset.Position(lit.Pos()), s)
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files < 20 {
		t.Fatalf("only %d Go files read: the check is not looking at the repository", files)
	}
}

// TestNodeAPISingleCopy: the metadata server's paths (images/nodeapi) are spelled there only. A
// string literal elsewhere in the non-test code of builders/, cmd/ and images/ that starts with
// one of them (alone or as a ServeMux pattern "GET /v1/…") is a second copy that can drift; in the
// node agent, so is a hand-made bearer header.
func TestNodeAPISingleCopy(t *testing.T) {
	paths := []string{"/v1/nodeconfig", "/v1/reports"}
	agentOnly := []string{"Bearer ", "Authorization"}
	files := 0
	for _, root := range []string{"../builders", "../cmd", "../images"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || filepath.ToSlash(path) == "../images/nodeapi") {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			files++
			agent := strings.HasPrefix(filepath.ToSlash(path), "../cmd/imgctl-node/")
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					return true
				}
				if method, rest, ok := strings.Cut(s, " "); ok && method != "" && strings.ToUpper(method) == method {
					s = rest // a ServeMux pattern: METHOD /path
				}
				for _, p := range paths {
					if strings.HasPrefix(s, p) {
						t.Errorf("%s: string %q repeats %q: use the constant from images/nodeapi", fset.Position(lit.Pos()), s, p)
					}
				}
				for _, a := range agentOnly {
					if agent && strings.HasPrefix(s, a) {
						t.Errorf("%s: string %q repeats %q: use images/nodeapi (Bearer, AuthorizationHeader)", fset.Position(lit.Pos()), s, a)
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files < 30 {
		t.Fatalf("only %d Go files read: the check is not looking at the repository", files)
	}
}
