"""The seed's code samples (Model Profile, Partition Optimizer, Layer Placement, Latency Estimation), run as
written with only the import changed to `from rotafx import ...`.

`model` is not defined by the seed; here it is an 80-layer MLP so that the Layer Placement sample's layer
indices 0-79 exist. ModelProfile.from_tensorflow / from_onnx are not available yet (issue 6), so those two
lines of the Model Profile sample are commented out.
"""

import torch

model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(80)])

# --- Model Profile -----------------------------------------------------------------------------
from rotafx import ModelProfile

# From PyTorch model
profile = ModelProfile.from_pytorch(model)

# From TensorFlow/Keras
# profile = ModelProfile.from_tensorflow(model)   # issue 6

# From ONNX file
# profile = ModelProfile.from_onnx("model.onnx")  # issue 6

# Inspect profile
print(f"Total parameters: {profile.total_params:,}")
print(f"Total layers: {profile.num_layers}")
print(f"Memory footprint: {profile.memory_mb:.1f} MB")

# Per-layer analysis
for layer in profile.layers:
    print(f"{layer.name}: {layer.params:,} params, "
          f"{layer.flops:,} FLOPs, "
          f"{layer.activation_size_mb:.1f} MB activations")

# --- Partition Optimizer -----------------------------------------------------------------------
from rotafx import PartitionOptimizer, ModelProfile

# Define your infrastructure
topology = {
    "ground_nodes": 2,
    "orbital_nodes": 4,
    "ground_flops": 100e12,       # 100 TFLOPS per ground node
    "orbital_flops": 20e12,       # 20 TFLOPS per orbital node
    "uplink_bandwidth": 100e6,    # 100 Mbps ground→orbit
    "downlink_bandwidth": 500e6,  # 500 Mbps orbit→ground
    "isl_bandwidth": 10e9,        # 10 Gbps inter-satellite
    "ground_orbit_latency_ms": 25 # LEO latency
}

# Profile your model
profile = ModelProfile.from_pytorch(model)

# Find optimal partition
optimizer = PartitionOptimizer(api_key="rs_...")
partition = optimizer.optimize(
    model=profile,
    topology=topology,
    objective="minimize_latency"  # or "minimize_bandwidth", "balance"
)

# View results
print(f"Optimal cut points: {partition.cut_points}")
print(f"Ground layers: {partition.ground_layers}")
print(f"Orbital layers: {partition.orbital_layers}")
print(f"Estimated latency: {partition.estimated_latency_ms:.1f} ms")
print(f"Activation transfer: {partition.transfer_size_mb:.1f} MB")

# --- Layer Placement ---------------------------------------------------------------------------
from rotafx import LayerPlacement

# Manual placement
placement = LayerPlacement()
placement.assign_ground(layers=[0, 1, 2, 3, 4])      # First 5 layers
placement.assign_orbital(layers=range(5, 75))         # Middle layers
placement.assign_ground(layers=[75, 76, 77, 78, 79])  # Last 5 layers

# Validate placement
validation = placement.validate(profile, topology)
if not validation.is_valid:
    print(f"Issues: {validation.issues}")

# Or refine optimizer result
partition = optimizer.optimize(model=profile, topology=topology)
partition.move_layer(15, to="ground")  # Manual adjustment
partition.recalculate()

# --- Latency Estimation ------------------------------------------------------------------------
from rotafx import LatencyEstimator

estimator = LatencyEstimator(topology=topology)

# Estimate for a partition
estimate = estimator.estimate(partition)

print(f"Total latency: {estimate.total_ms:.1f} ms")
print(f"  Ground compute: {estimate.ground_compute_ms:.1f} ms")
print(f"  Orbital compute: {estimate.orbital_compute_ms:.1f} ms")
print(f"  Uplink transfer: {estimate.uplink_ms:.1f} ms")
print(f"  Downlink transfer: {estimate.downlink_ms:.1f} ms")
print(f"  Propagation: {estimate.propagation_ms:.1f} ms")

# Breakdown by layer
for layer_est in estimate.by_layer:
    print(f"  {layer_est.name}: {layer_est.total_ms:.1f} ms on {layer_est.node}")

# The hand placement, estimated the same way (the seed estimates partitions; placements work too)
print(f"Hand placement: {estimator.estimate(placement).total_ms:.1f} ms")
