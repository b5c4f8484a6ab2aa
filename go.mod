module dst

go 1.26.8

require (
	github.com/cockroachdb/datadriven v1.0.3
	github.com/dustin/go-humanize v1.1.0
	github.com/hanwen/go-fuse/v2 v2.12.1
	github.com/leanovate/gopter v0.2.11
	github.com/pojntfx/go-nbd v0.3.2
	github.com/stretchr/testify v1.12.1
	go.yaml.in/yaml/v3 v3.0.5
	golang.org/x/sync v0.25.0
	golang.org/x/sys v0.50.0
	golang.org/x/time v0.16.0
)

require github.com/pmezard/go-difflib v1.0.0 // indirect
