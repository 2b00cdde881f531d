-- A family's balance and a payment for a dependant's invoice look patients up by their
-- responsible party: an index keeps that from scanning the clinic's patients.
CREATE INDEX patients_responsible ON patients (clinic_id, responsible_party_id)
    WHERE responsible_party_id IS NOT NULL;
