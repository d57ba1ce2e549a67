// Nanonis TCP programming interface: codec and driver (being written).
enum NanonisDriverPlaceholder {}
