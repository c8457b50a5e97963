package mem_test

import (
	"testing"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/mem"
	"github.com/pgharbor/pgharbor/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return mem.New() })
}
