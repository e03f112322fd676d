package initrd

// NICModules are the network drivers a netbooted node may need, virtual and physical: an
// initrd includes those its kernel has.
var NICModules = []string{"virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "tg3", "ena"}

// StorageModules are the common server storage controllers: an initrd includes those its
// kernel has, so a root or STATE partition behind them is found.
var StorageModules = []string{"ahci", "nvme", "megaraid_sas", "mpt3sas"}
