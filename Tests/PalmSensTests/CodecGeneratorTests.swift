import Foundation
import PalmSensDriver
import XCTest

/// The example of every technique kind whose script is checked in as `Fixtures/<kind>.mscr`.
enum GeneratorExamples {
    static let json: [String: String] = [
        "ocp": #"{"kind": "ocp", "duration_s": 60, "interval_s": 0.5}"#,
        "ca": #"{"kind": "ca", "steps": [{"potential_v": 0.2, "duration_s": 10}, {"potential_v": -0.15, "duration_s": 5}], "interval_s": 0.1}"#,
        "cp": #"{"kind": "cp", "steps": [{"current_a": 0.001, "duration_s": 20}, {"current_a": -0.0005, "duration_s": 20}], "interval_s": 0.1}"#,
        "cv": #"{"kind": "cv", "begin_v": 0, "vertex1_v": 0.5, "vertex2_v": -0.5, "step_v": 0.01, "scan_rate_v_per_s": 0.1, "cycles": 3}"#,
        "lsv": #"{"kind": "lsv", "begin_v": -0.5, "end_v": 0.5, "step_v": 0.005, "scan_rate_v_per_s": 0.05}"#,
        "gcd": #"{"kind": "gcd", "c_rate": 0.5, "capacity_mah": 2.5, "upper_limit_v": 4.2, "lower_limit_v": 3.0, "rest_s": 60, "cycles": 2, "interval_s": 1}"#,
        "hold": #"{"kind": "hold", "potential_v": 0.3, "duration_s": 30, "interval_s": 0.2}"#,
        "eis": #"{"kind": "eis", "f_start_hz": 100000, "f_end_hz": 0.1, "points_per_decade": 5, "amplitude_v_rms": 0.01, "dc_bias_v": 0.2}"#,
        "protocol": #"""
            {"kind": "protocol", "steps": [
              {"kind": "gcd", "c_rate": 0.1, "upper_limit_v": 4.2, "lower_limit_v": 3.0, "rest_s": 600, "cycles": 3, "interval_s": 10},
              {"repeat": 10, "steps": [
                {"kind": "gcd", "c_rate": 0.5, "upper_limit_v": 4.2, "lower_limit_v": 3.0, "rest_s": 300, "cycles": 1, "interval_s": 5},
                {"kind": "eis", "f_start_hz": 10000, "f_end_hz": 0.1, "points_per_decade": 6, "amplitude_v_rms": 0.005, "dc_bias_v": 3.0}
              ]}
            ]}
            """#,
    ]

    /// Options the fixtures were generated with: trigger on GPIO0, 2.5 mAh default capacity.
    static let generator = MethodSCRIPTGenerator(triggerGPIOMask: 1, currentRangeA: nil, defaultCapacityMah: 2.5)

    static var fixturesDirectory: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures") }

    static func script(_ kind: String) throws -> GeneratedScript {
        try generator.generate(Program.decode(json: json[kind]!))
    }
}

final class CodecGeneratorTests: XCTestCase {
    /// Set PALMSENS_WRITE_FIXTURES=1 to rewrite Fixtures/*.mscr from the generator.
    func testFixtures_matchTheGeneratorForEveryKind() throws {
        let write = ProcessInfo.processInfo.environment["PALMSENS_WRITE_FIXTURES"] == "1"
        for kind in GeneratorExamples.json.keys.sorted() {
            let script = try GeneratorExamples.script(kind)
            let url = GeneratorExamples.fixturesDirectory.appendingPathComponent("\(kind).mscr")
            if write {
                try FileManager.default.createDirectory(at: GeneratorExamples.fixturesDirectory, withIntermediateDirectories: true)
                try script.text.write(to: url, atomically: true, encoding: .utf8)
            }
            let stored = try String(contentsOf: url, encoding: .utf8)
            XCTAssertEqual(script.text, stored, "Fixtures/\(kind).mscr differs from the generator's output")
        }
    }
}
