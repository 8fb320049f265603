"""The CMS emulator's request counts (`/_sandbox/requests`): what the sync benchmark reports."""

from __future__ import annotations

from tests.sandbox.test_cms_emulator import open_cms


async def test_data_and_token_requests_are_counted_faulted_ones_included_and_reset() -> None:
    async with open_cms() as cms:
        assert (await cms.client.get("/_sandbox/requests")).json() == {
            "Patient": 0,
            "Coverage": 0,
            "ExplanationOfBenefit": 0,
            "token": 0,
        }
        token = (await cms.login())["access_token"]
        await cms.fhir("metadata", None)  # not a data request
        await cms.fhir("ExplanationOfBenefit", token, {"_count": "10"})
        await cms.fhir("Coverage", token)
        await cms.put_faults(server_errors=1)
        assert (await cms.fhir("Patient", token)).status_code == 502  # CMS saw it all the same
        assert (await cms.fhir("Patient/-19990000000001", token)).status_code == 200
        counts = {"Patient": 2, "Coverage": 1, "ExplanationOfBenefit": 1, "token": 1}
        assert (await cms.client.delete("/_sandbox/requests")).json() == counts
        assert set((await cms.client.get("/_sandbox/requests")).json().values()) == {0}
