"""Pure planning core: memory, performance, power, Pareto front and fleet packing."""
