import Foundation
import OperandoCore

/// The simulated electrode surface under the AFM tip: what the scan of a composite battery
/// electrode shows, following the virtual cell.
///
/// - Particles: oblate spheroids of active material (graphite-like), placed with a seeded
///   generator over `extent` around the scanner's origin, 0.3–1.2 µm in radius, 0.3–0.6 as tall
///   as wide, on a binder/carbon matrix with a few nanometres of long-wavelength roughness. Where
///   particles overlap the taller one shows.
/// - Grain edges: each particle is made of primary grains (a Voronoi tiling, ≈ 250 nm cells, from
///   a hashed jittered grid so nothing is stored); boundaries are grooves 8 nm deep, 15 nm wide.
/// - State of charge: lithiation swells the particles: their height grows by 8 % and their
///   radius by 2 % from empty to full (`stateOfCharge` of the virtual cell).
/// - SEI: a layer over everything, 2 nm + 4 nm × √cycles thick, with a texture whose amplitude is
///   a third of its thickness. It insulates: the conductive-AFM current falls as exp(−t / 1.2 nm).
public struct NanonisSurface: Sendable {
    public struct Particle: Sendable, Equatable {
        /// Centre (m) in the scanner's coordinates.
        public var x: Double
        public var y: Double
        /// Radius (m) when empty.
        public var radius: Double
        /// Height / radius.
        public var aspect: Double
    }

    /// What lies at one point.
    public struct Point: Sendable, Equatable {
        /// Height of the surface (m), SEI included.
        public var height: Double
        /// Height of the particle material alone (m), 0 on the matrix.
        public var particleHeight: Double
        /// 1 on a particle, 0 on the matrix.
        public var onParticle: Bool
        /// SEI thickness (m).
        public var sei: Double
        /// 0…1: how close to a grain boundary (1 on it).
        public var grainEdge: Double
    }

    public let particles: [Particle]
    /// Side of the square area particles are placed in (m), centred on the origin.
    public let extent: Double
    private let seed: UInt64
    private let matrixWaves: [(kx: Double, ky: Double, phase: Double, amplitude: Double)]
    /// Particles indexed by a coarse grid (1 µm cells) so a point looks at its neighbours only.
    private let grid: [Int: [Int]]
    private static let gridCell = 1e-6

    public static let grainCell = 250e-9
    public static let grainGrooveDepth = 8e-9
    public static let heightSwell = 0.08
    public static let radiusSwell = 0.02

    public init(seed: UInt64, extent: Double = 20e-6, particleCount: Int = 160) {
        self.seed = seed
        self.extent = extent
        var random = SeededRandom(seed: seed ^ 0x5eed_5eed)
        var list: [Particle] = []
        for _ in 0..<particleCount {
            let x = (random.uniform() - 0.5) * extent
            let y = (random.uniform() - 0.5) * extent
            let r = 0.3e-6 + 0.9e-6 * random.uniform()
            list.append(Particle(x: x, y: y, radius: r, aspect: 0.3 + 0.3 * random.uniform()))
        }
        particles = list
        matrixWaves = (0..<5).map { _ in
            let wavelength = 1.5e-6 + 4e-6 * random.uniform()
            let angle = random.uniform() * 2 * Double.pi
            return (2 * Double.pi / wavelength * cos(angle), 2 * Double.pi / wavelength * sin(angle), random.uniform() * 2 * Double.pi, 1e-9 + 2e-9 * random.uniform())
        }
        var g: [Int: [Int]] = [:]
        let reach = 1.2e-6 * (1 + Self.radiusSwell)
        for (i, p) in list.enumerated() {
            let x0 = Self.cellIndex(p.x - reach), x1 = Self.cellIndex(p.x + reach)
            let y0 = Self.cellIndex(p.y - reach), y1 = Self.cellIndex(p.y + reach)
            for cx in x0...x1 {
                for cy in y0...y1 { g[Self.key(cx, cy), default: []].append(i) }
            }
        }
        grid = g
    }

    private static func cellIndex(_ v: Double) -> Int { Int((v / gridCell).rounded(.down)) }
    private static func key(_ x: Int, _ y: Int) -> Int { x &* 1_000_003 &+ y }

    /// SEI thickness (m) after `cycle` cycles.
    public static func seiThickness(cycle: Int) -> Double { 2e-9 + 4e-9 * Double(max(0, cycle)).squareRoot() }

    /// The surface at (x, y) (m, scanner coordinates) for a cell at `stateOfCharge` after `cycle` cycles.
    public func point(x: Double, y: Double, stateOfCharge: Double, cycle: Int) -> Point {
        let soc = min(max(stateOfCharge, 0), 1)
        var particleHeight = 0.0
        var on = false
        if let candidates = grid[Self.key(Self.cellIndex(x), Self.cellIndex(y))] {
            for i in candidates {
                let p = particles[i]
                let r = p.radius * (1 + Self.radiusSwell * soc)
                let dx = x - p.x, dy = y - p.y
                let q = (dx * dx + dy * dy) / (r * r)
                guard q < 1 else { continue }
                let h = p.radius * p.aspect * (1 + Self.heightSwell * soc) * (1 - q).squareRoot()
                if h > particleHeight { particleHeight = h }
                on = true
            }
        }
        var edge = 0.0
        if on {
            edge = grainEdge(x: x, y: y)
            particleHeight = max(0, particleHeight - Self.grainGrooveDepth * edge)
        }
        var matrix = 0.0
        for w in matrixWaves { matrix += w.amplitude * sin(w.kx * x + w.ky * y + w.phase) }
        let sei = Self.seiThickness(cycle: cycle)
        let texture = sei / 3 * (valueNoise(x: x / 60e-9, y: y / 60e-9) * 2 - 1)
        return Point(height: max(particleHeight, matrix) + sei + texture, particleHeight: particleHeight, onParticle: on, sei: sei, grainEdge: edge)
    }

    /// 1 on a grain boundary, falling to 0 over 15 nm: from the two nearest seeds of a jittered
    /// grid (one seed per `grainCell` cell, placed by a hash).
    private func grainEdge(x: Double, y: Double) -> Double {
        let s = Self.grainCell
        let ci = Int((x / s).rounded(.down)), cj = Int((y / s).rounded(.down))
        var d1 = Double.infinity, d2 = Double.infinity
        for i in (ci - 1)...(ci + 1) {
            for j in (cj - 1)...(cj + 1) {
                let h = hash(i, j)
                let sx = (Double(i) + 0.1 + 0.8 * Double(h & 0xFFFF) / 65535) * s
                let sy = (Double(j) + 0.1 + 0.8 * Double(h >> 16 & 0xFFFF) / 65535) * s
                let d = ((x - sx) * (x - sx) + (y - sy) * (y - sy)).squareRoot()
                if d < d1 { d2 = d1; d1 = d } else if d < d2 { d2 = d }
            }
        }
        let gap = (d2 - d1) / 2  // distance to the bisector
        let w = 15e-9
        return exp(-(gap * gap) / (w * w))
    }

    /// Smooth value noise in 0…1 with unit cell size.
    private func valueNoise(x: Double, y: Double) -> Double {
        let i = Int(x.rounded(.down)), j = Int(y.rounded(.down))
        let fx = x - Double(i), fy = y - Double(j)
        func v(_ a: Int, _ b: Int) -> Double { Double(hash(a, b) & 0xFFFF) / 65535 }
        let sx = fx * fx * (3 - 2 * fx), sy = fy * fy * (3 - 2 * fy)
        let top = v(i, j) + (v(i + 1, j) - v(i, j)) * sx
        let bottom = v(i, j + 1) + (v(i + 1, j + 1) - v(i, j + 1)) * sx
        return top + (bottom - top) * sy
    }

    private func hash(_ i: Int, _ j: Int) -> UInt64 {
        var z = seed &+ UInt64(bitPattern: Int64(i)) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(bitPattern: Int64(j)) &* 0xC2B2_AE3D_27D4_EB4F
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
