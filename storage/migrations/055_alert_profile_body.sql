-- The alarm profile an excursion was judged under, frozen with it (its body, not only its id and
-- version): a later change of the profile cannot change what the excursion record says.
ALTER TABLE alerts ADD COLUMN profile_body jsonb;
