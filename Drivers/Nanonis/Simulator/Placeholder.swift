// Nanonis controller simulator (being written).
enum NanonisSimulatorPlaceholder {}
