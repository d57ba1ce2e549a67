import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import OperandoTestSupport
import XCTest

/// The simulated surface follows the virtual cell: particles swell as it charges, the SEI grows
/// with cycles; checked on the model itself and through the driver's recorded frames.
final class NanonisSurfaceTests: XCTestCase {
    private let surface = NanonisSurface(seed: 3)

    /// Mean particle height over a 5 µm square around the origin (points on particles only).
    private func meanParticleHeight(soc: Double, cycle: Int) -> Double {
        var sum = 0.0, n = 0
        for i in 0..<100 {
            for j in 0..<100 {
                let p = surface.point(x: (Double(i) / 99 - 0.5) * 5e-6, y: (Double(j) / 99 - 0.5) * 5e-6, stateOfCharge: soc, cycle: cycle)
                if p.onParticle { sum += p.particleHeight; n += 1 }
            }
        }
        XCTAssertGreaterThan(n, 1000, "the area has particles")
        return sum / Double(n)
    }

    func testParticles_swellWithStateOfCharge() {
        let low = meanParticleHeight(soc: 0.1, cycle: 0)
        let high = meanParticleHeight(soc: 0.9, cycle: 0)
        XCTAssertGreaterThan(low, 50e-9)
        XCTAssertGreaterThan(high, low * 1.04, "8 % swelling from empty to full")
    }

    func testSEI_thickensWithCycles_andCoversTheSurface() {
        XCTAssertEqual(NanonisSurface.seiThickness(cycle: 0), 2e-9)
        XCTAssertGreaterThan(NanonisSurface.seiThickness(cycle: 25), 20e-9)
        let fresh = surface.point(x: 1e-7, y: 2e-7, stateOfCharge: 0.5, cycle: 0)
        let aged = surface.point(x: 1e-7, y: 2e-7, stateOfCharge: 0.5, cycle: 25)
        XCTAssertGreaterThan(aged.sei, fresh.sei)
        XCTAssertGreaterThan(aged.height, fresh.height + 10e-9)
    }

    func testSurface_isReproducibleFromItsSeed_andHasGrainEdges() {
        XCTAssertEqual(NanonisSurface(seed: 3).particles, surface.particles)
        XCTAssertNotEqual(NanonisSurface(seed: 4).particles, surface.particles)
        var edges = 0
        for i in 0..<400 {
            let p = surface.point(x: Double(i) * 5e-9, y: 0, stateOfCharge: 0.5, cycle: 0)
            if p.onParticle && p.grainEdge > 0.5 { edges += 1 }
        }
        XCTAssertGreaterThan(edges, 0, "a 2 µm line across particles crosses grain boundaries")
    }

    /// Records one complete frame (after `prepare`), returning channel 0 (Z) and 1 (current)
    /// forward data.
    private func recordFrame(_ driver: NanonisDriver, _ bench: SimulatorBench, _ sink: CollectingSink) throws -> (z: [Float], current: [Float]) {
        let start = sink.records(driver.frameStream).count
        // The frame that completes after the next one starts, so all of it saw the new state.
        try acquire(driver, bench.host, sink) { sink.records(driver.frameStream).count >= start + 2 }
        let f = sink.records(driver.frameStream)[start + 1].floats
        let plane = driver.settings.lines * driver.settings.pixels
        return (Array(f[0..<plane]), Array(f[2 * plane..<3 * plane]))
    }

    func testRecordedTopography_followsTheCell() throws {
        var params = VirtualCell.Parameters()
        params.initialStateOfCharge = 0.05
        let cell = VirtualCell(params)
        let bench = SimulatorBench(cell: cell)
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["channels": .string("30,0"), "pixels": .integer(32), "lines": .integer(16)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        _ = try driver.perform(DeviceCommand(device: "afm", name: "bias", arguments: ["volts": .number(1)]), link: bench.host, sink: sink)

        let empty = try recordFrame(driver, bench, sink)
        // Charge the cell to ~95 % (0.027 A·s at 600× is 90 % of 5 mAh), then rest it.
        cell.advance(current: 0.027, hostSeconds: 1)
        cell.advance(current: 0, hostSeconds: 0)
        XCTAssertGreaterThan(cell.snapshot.stateOfCharge, 0.9)
        let full = try recordFrame(driver, bench, sink)
        func mean(_ v: [Float]) -> Double { v.reduce(0) { $0 + Double($1) } / Double(v.count) }
        func upperMean(_ v: [Float]) -> Double { mean(Array(v.sorted().suffix(v.count / 4))) }
        // The tallest quarter of the image is particle tops: they rose with lithiation.
        XCTAssertGreaterThan(upperMean(full.z) - upperMean(empty.z), 3e-9, "particles swell as the cell charges")

        for _ in 0..<25 { cell.completeCycle() }
        let aged = try recordFrame(driver, bench, sink)
        XCTAssertGreaterThan(mean(aged.z) - mean(full.z), 10e-9, "the SEI grew by ~20 nm over 25 cycles")
        XCTAssertLessThan(mean(aged.current), mean(full.current) * 0.01, "the thicker SEI insulates")
        XCTAssertGreaterThan(mean(full.current), 1e-10, "particles conduct through a thin SEI at 1 V")
    }
}
