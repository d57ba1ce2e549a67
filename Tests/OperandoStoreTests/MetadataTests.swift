import Foundation
import OperandoCore
import XCTest

@testable import OperandoStore

final class MetadataTests: XCTestCase {
    static let complete: JSONValue = .object([
        "cell": .object(["format": .string("CR2032"), "working_electrode": .string("NMC811"), "counter_electrode": .string("Li"), "active_mass_mg": .number(12.5)]),
        "electrolyte": .object(["salt": .string("LiPF6"), "concentration_mol_per_l": .number(1), "solvents": .array([.string("EC"), .string("DMC")])]),
        "regime": .string("operando"),
        "lab": .object(["room": .string("B12")]),  // unknown to the schema: kept
    ])

    func testComplete_hasNoProblems_andUnknownFieldsAreKept() throws {
        XCTAssertEqual(MetadataSchema.problems(Self.complete), [])
        let json = try JSONEncoder().encode(Self.complete)
        let back = try JSONDecoder().decode(JSONValue.self, from: json)
        XCTAssertEqual(back, Self.complete)
        XCTAssertEqual(back[path: "lab.room"], .string("B12"))
    }

    func testMissingAndWrong_everyProblemNamedWithItsPath() {
        var m = Self.complete
        m.set(path: "electrolyte.concentration_mol_per_l", to: .string("1 M"))
        m.set(path: "cell.active_mass_mg", to: .number(-3))
        m.set(path: "regime", to: .string("sometimes"))
        m.set(path: "cell.format", to: .null)
        let problems = MetadataSchema.problems(m)
        XCTAssertEqual(problems.count, 4, "\(problems)")
        XCTAssertTrue(problems.contains { $0.hasPrefix("cell.format is required") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("electrolyte.concentration_mol_per_l must be a number") && $0.contains("\"1 M\"") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("cell.active_mass_mg = -3") && $0.contains("mg") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("regime must be one of \"operando\", \"in-situ-paused\"") }, "\(problems)")
        XCTAssertEqual(MetadataSchema.problems(.object([:])).count, MetadataSchema.fields.filter(\.required).count)
        XCTAssertEqual(MetadataSchema.problems(.string("x")).count, 1)
    }

    func testOldManifests_withStringMetadata_stillLoad() throws {
        let json = #"{"cell":"CR2032","operator":"test"}"#
        let m = try JSONDecoder().decode([String: JSONValue].self, from: Data(json.utf8))
        XCTAssertEqual(m["cell"], .string("CR2032"))
    }

    func testSchemaTable_listsEveryField() {
        let table = MetadataSchema.markdownTable
        for f in MetadataSchema.fields { XCTAssertTrue(table.contains("`\(f.path)`"), f.path) }
    }
}
